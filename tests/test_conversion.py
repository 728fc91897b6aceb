"""scripts/convert_dito_to_diffusers.py and convert_diffusers_to_dito.py, on toy models written in the official
checkpoint layout (the official code itself is not needed: docs/conversion.md says how it was checked against it)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from safetensors import safe_open
from safetensors.torch import load_file

from diffusers_dito import DITO_PRESETS, AutoencoderDiTo, DiToPipeline
from diffusers_dito.conversion import OFFICIAL_SPEC_EXAMPLE, config_from_spec, diffusers_to_official, spec_from_config

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
# Official-representable (32 GroupNorm groups, 4 decoder levels of 3 ResNets) and small: 16 px images.
TOY_CONFIG = {
    "block_out_channels": [32, 32, 32, 32],
    "encoder_layers_per_block": 1,
    "encoder_norm_num_groups": 32,
    "decoder_block_out_channels": [32, 32, 32, 32],
    "decoder_layers_per_block": 3,
    "decoder_norm_num_groups": 32,
    "decoder_time_embedding_dim": 64,
    "decoder_time_proj_dim": 48,
    "decoder_freq_shift": 1,
    "layer_norm_eps": 1e-5,
    "num_inference_steps": 4,
}


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scripts():
    return load_script("convert_dito_to_diffusers"), load_script("convert_diffusers_to_dito")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A random official-representable DiToPipeline folder and its official checkpoint (written by the reverse)."""
    torch.manual_seed(0)
    vae = AutoencoderDiTo.from_config(TOY_CONFIG)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # no zero-initialised tensor hides a mapping mistake
    folder = tmp_path_factory.mktemp("toy") / "pipeline"
    DiToPipeline(vae=vae, scheduler=FlowMatchEulerDiscreteScheduler()).save_pretrained(folder)
    return vae, folder


def official_checkpoint(vae: AutoencoderDiTo, path: Path, **extra_entries) -> dict:
    """A checkpoint in the official trainer's layout, built from `vae` with the conversion's own inverse."""
    spec = spec_from_config(dict(vae.config), resolution=16)
    sd = {**diffusers_to_official(vae.state_dict(), dict(vae.config)), **extra_entries}
    checkpoint = {"model": {**spec, "sd": sd}, "optimizers": {"encoder": {"name": "adamw", "sd": {}}}, "iter": 7}
    torch.save(checkpoint, path)
    return checkpoint


def run(script, capsys, *argv: str) -> tuple[int, str, str]:
    code = script.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


# ---------------------------------------------------------------------------------------------------- the model
# The decoder parameter counts of the official code's B/L/XL renderers, built from its
# configs/experiments/dito-{B,L,XL}-f8c4.yaml on the meta device (docs/conversion.md).
OFFICIAL_DECODER_PARAMETERS = {"dito-b-f8c4": 162_779_779, "dito-l-f8c4": 338_523_843, "dito-xl-f8c4": 620_941_379}


@pytest.mark.parametrize("name", sorted(OFFICIAL_DECODER_PARAMETERS))
def test_paper_presets_are_the_official_architecture(name):
    with torch.device("meta"):
        vae = AutoencoderDiTo.from_config(DITO_PRESETS[name])
    assert sum(p.numel() for p in vae.decoder_unet.parameters()) == OFFICIAL_DECODER_PARAMETERS[name]
    assert vae.decoder_unet.time_proj.num_channels == 320 and vae.config.layer_norm_eps == 1e-5
    official = config_from_spec({**OFFICIAL_SPEC_EXAMPLE}) if name == "dito-b-f8c4" else None
    if official is not None:  # the B spec of the official code converts to exactly this preset
        assert {k: v for k, v in vae.config.items() if k in official} == {
            k: tuple(v) if isinstance(v, list) else v for k, v in official.items()
        }


def test_a_folder_saved_before_the_sinusoid_fields_decodes_bit_identically():
    """tests/fixtures/autoencoder_dito_v1 was written by the code before `decoder_time_proj_dim` and
    `decoder_freq_shift` existed, with its outputs (one thread) beside it: a config without the fields means the old
    sinusoid (width c0, shift 0). Bit-identical on the CPU kernels that wrote the outputs; elsewhere kernel rounding
    (~1e-6) is allowed, far below what another sinusoid changes (~1)."""
    vae = AutoencoderDiTo.from_pretrained(FIXTURES / "autoencoder_dito_v1").eval()
    assert "decoder_time_proj_dim" not in json.loads((FIXTURES / "autoencoder_dito_v1" / "config.json").read_text())
    path = FIXTURES / "autoencoder_dito_v1_outputs.safetensors"
    expected = load_file(path)
    with safe_open(path, "pt") as f:
        same_kernels = f.metadata()["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            latents = vae.encode(expected["images"]).latents
            sample = vae.decode(latents, generator=[torch.Generator().manual_seed(i) for i in range(2)]).sample
    finally:
        torch.set_num_threads(threads)
    for got, want in ((latents, expected["latents"]), (sample, expected["decode"])):
        if same_kernels:
            assert torch.equal(got, want)
        else:
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------- the converters
def test_round_trip_ours_to_official_to_ours_is_bit_exact(scripts, toy, tmp_path, capsys):
    forward, reverse = scripts
    vae, folder = toy
    code, out, err = run(reverse, capsys, "--model_path", str(folder), "--output_path", str(tmp_path / "c.pth"),
                         "--resolution", "16")  # fmt: skip
    assert code == 0, err
    checkpoint = torch.load(tmp_path / "c.pth", weights_only=True)
    assert checkpoint["model"]["name"] == "dito" and checkpoint["model"]["args"]["z_shape"] == [4, 2, 2]
    assert torch.equal(checkpoint["model"]["sd"]["encoder.1.weight"][:, :, 0, 0], torch.eye(4))  # identity quant conv
    code, out, err = run(forward, capsys, "--checkpoint_path", str(tmp_path / "c.pth"),
                         "--output_path", str(tmp_path / "back"), "--verify")  # fmt: skip
    assert code == 0, err
    assert "Verified: " in out
    back = DiToPipeline.from_pretrained(str(tmp_path / "back")).vae
    assert all(torch.equal(value, back.state_dict()[key]) for key, value in vae.state_dict().items())
    assert {k: v for k, v in back.config.items() if not k.startswith("_")} == {
        k: v for k, v in vae.config.items() if not k.startswith("_")
    }


def test_conversion_negates_the_output_and_folds_the_quant_conv(toy):
    """The official net predicts x − (1 − σ_min)·ε, ours ε − x; the official quant conv Q folds into conv_out."""
    vae, _ = toy
    config = dict(vae.config)
    official = diffusers_to_official(vae.state_dict(), config)
    assert torch.equal(official["renderer.net.output.f.weight"], -vae.decoder_unet.conv_out.weight)
    q = torch.randn(4, 4, 1, 1, dtype=torch.float64)
    official["encoder.1.weight"], official["encoder.1.bias"] = q.float(), torch.arange(4.0)
    from diffusers_dito.conversion import official_to_diffusers

    converted, leftover = official_to_diffusers(official, config)
    assert leftover == []
    folded = AutoencoderDiTo.from_config(config).eval()
    folded.load_state_dict(converted)
    h = torch.randn(1, 32, 2, 2)
    with torch.no_grad():
        expected = torch.nn.functional.conv2d(vae.encoder.conv_out(h), q.float(), torch.arange(4.0))
        assert torch.allclose(folded.encoder.conv_out(h), expected, atol=1e-5)


def test_ema_weights_and_training_only_entries(scripts, toy, tmp_path, capsys):
    forward, _ = scripts
    vae, _ = toy
    ema = {f"renderer_ema.{k[len('renderer.'):]}": v + 1 for k, v in
           diffusers_to_official(vae.state_dict(), dict(vae.config)).items() if k.startswith("renderer.")}  # fmt: skip
    official_checkpoint(vae, tmp_path / "c.pth", **ema, **{"lpips_loss.net.0.weight": torch.ones(1)})
    code, out, err = run(forward, capsys, "--checkpoint_path", str(tmp_path / "c.pth"), "--output_path",
                         str(tmp_path / "ema"), "--use_ema", "--num_inference_steps", "2")  # fmt: skip
    assert code == 0, err
    assert "lpips_loss.* (1)" in out and "renderer.* (" in out  # the weights whose EMA was taken, listed
    converted = DiToPipeline.from_pretrained(str(tmp_path / "ema")).vae
    assert converted.config.num_inference_steps == 2
    assert torch.equal(converted.decoder_unet.conv_in.weight, vae.decoder_unet.conv_in.weight + 1)
    assert torch.equal(converted.encoder.conv_in.weight, vae.encoder.conv_in.weight)  # no encoder EMA: the weights


def test_dry_run_writes_nothing(scripts, toy, tmp_path, capsys):
    forward, _ = scripts
    official_checkpoint(toy[0], tmp_path / "c.pth")
    code, out, err = run(forward, capsys, "--checkpoint_path", str(tmp_path / "c.pth"),
                         "--output_path", str(tmp_path / "out"), "--dry_run", "--verify")  # fmt: skip
    assert code == 0 and "Verified" in out and "nothing written" in out, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pth"]


def kl_spec(spec: dict) -> dict:
    spec["args"]["encoder"]["args"]["double_z"] = True
    return spec


def pickled_code(path: Path) -> None:
    torch.save({"model": {"sd": {}, "hook": FlowMatchEulerDiscreteScheduler}}, path)  # a class: pickled code


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("unknown key", ("have no place in AutoencoderDiTo", "foo.weight")),
        ("kl latents", ("double_z", "KL")),
        ("pickled code", ("not a checkpoint of tensors and plain containers",)),
        ("missing file", ("no such file",)),
        ("existing output", ("exists and is not an empty folder",)),
    ],
)
def test_refusals_are_one_line_with_exit_code_2(scripts, toy, tmp_path, capsys, case, fragments):
    forward, _ = scripts
    path = tmp_path / "c.pth"
    checkpoint = official_checkpoint(toy[0], path, **({"foo.weight": torch.ones(1)} if case == "unknown key" else {}))
    if case == "kl latents":
        torch.save({**checkpoint, "model": kl_spec(checkpoint["model"])}, path)
    elif case == "pickled code":
        pickled_code(path)
    elif case == "missing file":
        path.unlink()
    output = tmp_path / "out"
    if case == "existing output":
        output.mkdir()
        (output / "keep.txt").write_text("mine")
    code, _, err = run(forward, capsys, "--checkpoint_path", str(path), "--output_path", str(output))
    assert_one_line_error(code, err, *fragments)
    assert not output.exists() or sorted(p.name for p in output.iterdir()) == ["keep.txt"]


def test_reverse_refuses_what_the_official_code_cannot_build(scripts, tmp_path, capsys):
    _, reverse = scripts
    folder = tmp_path / "old"
    AutoencoderDiTo.from_config({**TOY_CONFIG, "decoder_freq_shift": 0}).save_pretrained(folder)
    code, _, err = run(reverse, capsys, "--model_path", str(folder), "--output_path", str(tmp_path / "c.pth"))
    assert_one_line_error(code, err, "decoder_freq_shift must be 1")
    code, _, err = run(
        reverse, capsys, "--model_path", str(tmp_path / "none"), "--output_path", str(tmp_path / "c.pth")
    )
    assert_one_line_error(code, err, "is not a DiToPipeline or AutoencoderDiTo folder")
    assert not (tmp_path / "c.pth").exists()


def test_official_layout_has_the_official_shapes():
    """Shapes the official modules have (models/networks/consistency_decoder_unet.py and the taming encoder of the
    official code), on widths that all differ, so that a permuted level or block cannot pass the round trip alone."""
    config = {**TOY_CONFIG, "block_out_channels": [32, 64, 64, 64], "decoder_block_out_channels": [32, 64, 96, 96]}
    with torch.device("meta"):
        vae = AutoencoderDiTo.from_config(config)
    shapes = {k: tuple(v.shape) for k, v in diffusers_to_official(vae.state_dict(), dict(vae.config)).items()}
    c0, c1, c2, t_dim, pe = 32, 64, 96, 64, 48
    expected = {
        "encoder.0.down.1.block.0.nin_shortcut.weight": (64, 32, 1, 1),  # ch -> 2·ch at level 1
        "encoder.0.down.0.downsample.conv.weight": (32, 32, 3, 3),
        "encoder.0.mid.attn_1.q.weight": (64, 64, 1, 1),
        "encoder.1.weight": (4, 4, 1, 1),
        "renderer.net.embed_image.f.weight": (c0, 3 + 4, 3, 3),
        "renderer.net.embed_time.f_1.weight": (t_dim, pe),
        "renderer.net.down.1.0.f_s.weight": (c1, c0, 1, 1),  # down_1[0] = ConvResblock(c0, c1)
        "renderer.net.down.2.3.f_t.weight": (2 * c2, t_dim),  # down_2[3] = Downsample(c2)
        "renderer.net.up.3.0.gn_1.weight": (2 * c2,),  # up_3[0] = ConvResblock(c2 * 2, c2): applied first
        "renderer.net.up.2.3.gn_1.weight": (c2 + c1,),  # up_2[3] = ConvResblock(c2 + c1, c2)
        "renderer.net.up.1.0.gn_1.weight": (c2 + c1,),  # up_1[0] = ConvResblock(c2 + c1, c1)
        "renderer.net.up.1.3.gn_1.weight": (c0 + c1,),  # up_1[3] = ConvResblock(c0 + c1, c1)
        "renderer.net.up.1.4.f_1.weight": (c1, c1, 3, 3),  # up_1[4] = Upsample(c1)
        "renderer.net.up.0.0.gn_1.weight": (c0 + c1,),  # up_0[0] = ConvResblock(c0 + c1, c0)
        "renderer.net.mid.1.f_2.weight": (c2, c2, 3, 3),
        "renderer.net.output.f.weight": (3, c0, 3, 3),
    }
    assert {key: shapes.get(key) for key in expected} == expected
    assert not any(key.startswith("renderer.net.up.0.4") for key in shapes)  # up_0 has no Upsample
