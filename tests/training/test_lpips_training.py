"""The DiTo+LPIPS variant (`--lpips_weight`): the loss term, its gradients, and a training run with it.

LPIPS reads torchvision's ImageNet backbone from a local file; the tests write one with random weights, which is
enough to check the mechanics (not the quality) of the term.
"""

import json

import pytest
import torch
from script_helpers import fresh_accelerate_state, load_script, one_thread, reset_accelerate  # noqa: F401
from test_train_dito import config_path, image_dir, read_dump, run_args, train_dito, vae_weights  # noqa: F401

from conftest import tiny_dito_config
from diffusers_dito import AutoencoderDiTo, dito_flow_matching_loss
from diffusers_dito.metrics import load_lpips
from diffusers_dito.metrics.perceptual import _lpips_backbone


@pytest.fixture(scope="module")
def alex_backbone(tmp_path_factory):
    """A torchvision-layout AlexNet `features` checkpoint with random weights, under torchvision's file name."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lpips") / "alexnet-owt-7be5be79.pth"
    torch.save(_lpips_backbone("alex").state_dict(), path)
    return path


def tiny_vae() -> AutoencoderDiTo:
    torch.manual_seed(0)
    return AutoencoderDiTo.from_config(tiny_dito_config())


def images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_weight_zero_is_bit_identical_to_the_plain_loss(alex_backbone):
    vae, x = tiny_vae(), images()
    plain = dito_flow_matching_loss(vae, x, noise_sync_prob=0.5, generator=torch.Generator().manual_seed(3))
    zero = dito_flow_matching_loss(
        vae, x, noise_sync_prob=0.5, generator=torch.Generator().manual_seed(3),
        lpips_model=load_lpips(alex_backbone), lpips_weight=0.0,
    )  # fmt: skip
    assert torch.equal(plain.per_sample_loss, zero.per_sample_loss) and torch.equal(plain.loss, zero.loss)
    assert torch.equal(zero.flow_loss, plain.per_sample_loss) and not zero.lpips_loss.any()


def test_lpips_sees_the_one_step_estimate_and_is_added_with_its_weight():
    vae, x, seen = tiny_vae(), images(), {}
    predict = vae.predict_velocity

    def spy_velocity(noisy, timestep, conditioning):
        seen["noisy"], seen["t"] = noisy, timestep / 1000
        seen["v"] = predict(noisy, timestep, conditioning)
        return seen["v"]

    def spy_lpips(estimate, reference):
        seen["estimate"], seen["reference"] = estimate, reference
        return (estimate - reference).abs().mean(dim=(1, 2, 3))  # (B,)

    vae.predict_velocity = spy_velocity
    out = dito_flow_matching_loss(
        vae, x, generator=torch.Generator().manual_seed(3), lpips_model=spy_lpips, lpips_weight=0.5
    )
    expected = seen["noisy"] - seen["t"].view(-1, 1, 1, 1) * seen["v"]  # x̂ = x_t − t·v
    torch.testing.assert_close(seen["estimate"], expected)
    assert torch.equal(seen["reference"], x)
    torch.testing.assert_close(out.per_sample_loss, out.flow_loss + 0.5 * out.lpips_loss)
    assert (out.lpips_loss > 0).all()


def test_lpips_gradients_reach_encoder_and_decoder(alex_backbone):
    vae, lpips_model = tiny_vae(), load_lpips(alex_backbone)
    out = dito_flow_matching_loss(
        vae, images(), generator=torch.Generator().manual_seed(3), lpips_model=lpips_model, lpips_weight=0.5
    )
    out.lpips_loss.mean().backward()  # the LPIPS term alone
    for part in (vae.encoder, vae.decoder_unet):
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), type(part).__name__
    assert all(p.grad is None for p in lpips_model.parameters())  # the backbone stays frozen


def test_lpips_weight_needs_a_weight_file(train_dito, image_dir, config_path, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DITO_LPIPS_BACKBONE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty hub cache
    with pytest.raises(SystemExit) as error:
        run_args(train_dito, tmp_path / "out", image_dir, config_path, "--lpips_weight", "0.5", "--lpips_net", "alex")
    err = capsys.readouterr().err.strip().splitlines()
    assert error.value.code == 2 and len(err) == 1  # one line
    assert "--lpips_weight 0.5 needs torchvision's alexnet-owt-7be5be79.pth (none given)" in err[0]
    assert not (tmp_path / "out").exists()


def test_training_with_lpips_logs_both_terms_and_resumes_exactly(
    train_dito,
    image_dir,
    config_path,
    alex_backbone,
    tmp_path,
):
    common = (
        "--max_train_samples", "6", "--checkpointing_steps", "2", "--use_ema",
        "--lpips_weight", "0.5", "--lpips_net", "alex", "--lpips_backbone", str(alex_backbone),
    )  # fmt: skip
    straight = tmp_path / "straight"
    train_dito.main(
        run_args(train_dito, straight, image_dir, config_path, "--max_train_steps", "4",
                 "--debug_dump_dir", str(tmp_path / "dump"), *common)
    )  # fmt: skip
    reset_accelerate()
    for logs in read_dump(tmp_path / "dump")["step_logs"]:
        assert logs["lpips_loss"] > 0 and logs["flow_loss"] > 0
        assert logs["loss"] == pytest.approx(logs["flow_loss"] + 0.5 * logs["lpips_loss"], rel=1e-5)

    split = tmp_path / "split"
    train_dito.main(run_args(train_dito, split, image_dir, config_path, "--max_train_steps", "2", *common))
    reset_accelerate()
    train_dito.main(
        run_args(train_dito, split, image_dir, config_path, "--max_train_steps", "4",
                 "--resume_from_checkpoint", "latest", *common)
    )  # fmt: skip
    for sub in ("vae", "vae_ema"):
        a, b = vae_weights(straight / "checkpoint-4" / sub), vae_weights(split / "checkpoint-4" / sub)
        assert all(torch.equal(a[name], b[name]) for name in a), sub


def test_training_with_weight_zero_matches_training_without_the_flag(train_dito, image_dir, config_path, tmp_path):
    digests = []
    for name, extra in (("plain", ()), ("zero", ("--lpips_weight", "0"))):
        dump = tmp_path / f"dump-{name}"
        train_dito.main(
            run_args(train_dito, tmp_path / name, image_dir, config_path, "--max_train_steps", "2",
                     "--debug_dump_dir", str(dump), *extra)
        )  # fmt: skip
        reset_accelerate()
        digests.append(json.loads((dump / "rank0.json").read_text())["weights_sha256"])
    assert digests[0] == digests[1]
