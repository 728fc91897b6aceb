"""`diffusers.AutoModel.from_pretrained(folder, subfolder=..., trust_remote_code=True)` on saved DiTo folders: the
`auto_map`, the model code copied into each folder, and loading it in a process without `diffusers_dito`."""

import importlib
import inspect
import json
import re
import sys
import textwrap

import pytest
import torch
from diffusers import AutoModel, FlowMatchEulerDiscreteScheduler

from conftest import run_python, tiny_dito_config
from diffusers_dito import DIT_PRESETS, AutoencoderDiTo, DiToDiTPipeline, DiToDiTTransformer2DModel
from diffusers_dito.hub import code_bundle

VAE_FILES = ["autoencoder_dito.py", "group_norm_sync.py", "hub.py", "latent_distribution.py", "safe_loading.py"]
VAE_FILES += ["scheduling.py", "tiling.py"]
DIT_FILES = ["dit_transformer.py", "hub.py", "safe_loading.py"]


def inputs():
    """A fixed image for the VAE and a fixed latent for the transformer (the same in the fresh process)."""
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latent = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    return image, latent


@torch.no_grad()
def outputs(vae, dit) -> dict:
    image, latent = inputs()
    z = vae.encode(image).latents
    return {
        "names": [type(vae).__name__, type(dit).__name__],
        "decoded": vae.decode(z, generator=torch.Generator().manual_seed(0), num_inference_steps=2).sample,
        "velocity": dit(latent, timestep=torch.tensor([500.0]), class_labels=torch.tensor([1])).sample,
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A DiToDiTPipeline folder (`pipe/`, with model_index.json) and the same two models saved bare (`bare/`)."""
    root = tmp_path_factory.mktemp("auto_model")
    torch.manual_seed(0)
    vae = AutoencoderDiTo(**tiny_dito_config()).eval()
    # diffusers' default initialisation, not `initialize_weights`, whose zeroed output layer would give zeros
    dit = DiToDiTTransformer2DModel.from_config(DIT_PRESETS["dit-tiny"]).eval()
    DiToDiTPipeline(dit, vae, FlowMatchEulerDiscreteScheduler()).save_pretrained(root / "pipe")
    vae.save_pretrained(root / "bare" / "vae")
    dit.save_pretrained(root / "bare" / "transformer")
    return root, outputs(vae, dit)


def test_each_model_folder_has_an_auto_map_and_the_code_it_names(saved):
    root, _ = saved
    for folder in (root / "pipe", root / "bare"):
        for subfolder, entry, files in (
            ("vae", "autoencoder_dito.AutoencoderDiTo", VAE_FILES),
            ("transformer", "dit_transformer.DiToDiTTransformer2DModel", DIT_FILES),
        ):
            config = json.loads((folder / subfolder / "config.json").read_text())
            assert config["auto_map"] == {"AutoModel": entry}
            code = sorted(p.name for p in (folder / subfolder).glob("*.py"))
            assert code == sorted(files + (["dito_auto_model.py"] if folder.name == "pipe" else []))
            for path in (folder / subfolder).glob("*.py"):
                # diffusers imports a folder's files as one flat package: no import may leave the folder
                assert not re.search(r"^\s*from\s+\.\.", path.read_text(), flags=re.MULTILINE), path


def test_a_pipeline_folder_names_one_class_per_subfolder_in_model_index(saved):
    root, _ = saved
    index = json.loads((root / "pipe" / "model_index.json").read_text())
    # diffusers' AutoModel reads this auto_map, not the subfolder's, whenever model_index.json exists
    assert index["auto_map"] == {"AutoModel": "dito_auto_model.DiToAutoModel"}
    assert "as DiToAutoModel" in (root / "pipe" / "vae" / "dito_auto_model.py").read_text()
    assert (
        "import DiToDiTTransformer2DModel as DiToAutoModel"
        in (root / "pipe" / "transformer" / "dito_auto_model.py").read_text()
    )
    assert not (root / "pipe" / "scheduler" / "dito_auto_model.py").exists()


def test_configs_with_an_auto_map_load_without_an_unexpected_argument(saved):
    root, _ = saved
    # diffusers warns about every config key the class does not take; only AutoModel reads `auto_map`
    for cls, path in (
        (AutoencoderDiTo, root / "bare" / "vae" / "config.json"),
        (DiToDiTTransformer2DModel, root / "bare" / "transformer" / "config.json"),
        (DiToDiTPipeline, root / "pipe" / "model_index.json"),
    ):
        config = json.loads(path.read_text())
        assert "auto_map" in config
        _, unused, _ = cls.extract_init_dict(config)
        assert "auto_map" not in unused, cls.__name__


def test_automodel_without_trust_remote_code_asks_for_it(saved):
    root, _ = saved
    for folder in ("pipe", "bare"):
        with pytest.raises(ValueError, match="trust_remote_code=True"):
            AutoModel.from_pretrained(root / folder, subfolder="vae")


def test_a_model_loaded_by_automodel_saves_a_folder_that_automodel_loads(saved, tmp_path):
    root, _ = saved
    # a str: diffusers 0.42.1's AutoModel joins the path into a load id and fails on a Path
    vae = AutoModel.from_pretrained(str(root / "bare"), subfolder="vae", trust_remote_code=True)
    assert type(vae) is not AutoencoderDiTo  # the folder's copy of the class
    vae.save_pretrained(tmp_path / "vae")  # copies its code from the module cache this time
    header = (tmp_path / "vae" / "tiling.py").read_text().splitlines()[0]
    assert header == "# Folder-relative copy of diffusers_dito.models.tiling by diffusers-dito's save_pretrained."
    again = AutoModel.from_pretrained(str(tmp_path / "vae"), trust_remote_code=True)
    assert type(again).__name__ == "AutoencoderDiTo"
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), again.state_dict().values()))


FRESH_PROCESS = """
import importlib.util, os, sys
if sys.argv[1] == "hidden":  # as if diffusers-dito were not installed: drop the folder its install puts on sys.path
    sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "diffusers_dito"))]
    assert importlib.util.find_spec("diffusers_dito") is None
import torch
from diffusers import AutoModel

root, out = sys.argv[2], sys.argv[3]
results = {}
for folder in ("pipe", "bare"):
    load = lambda subfolder: AutoModel.from_pretrained(os.path.join(root, folder), subfolder=subfolder,
                                                       trust_remote_code=True)
    results[folder] = outputs(load("vae"), load("transformer"))
assert "diffusers_dito" not in sys.modules  # the folders' own code ran, never the installed package
torch.save(results, out)
"""


@pytest.mark.parametrize("package", ["installed", "hidden"])
def test_automodel_in_a_fresh_process_returns_the_same_models(saved, tmp_path, package):
    root, expected = saved
    helpers = "import torch\n" + "\n".join(inspect.getsource(f) for f in (inputs, outputs))  # the same inputs
    run_python(
        helpers + FRESH_PROCESS, package, str(root), str(tmp_path / "out.pt"),
        cwd=tmp_path, HF_MODULES_CACHE=str(tmp_path / "modules"),  # nothing cached
    )  # fmt: skip
    loaded = torch.load(tmp_path / "out.pt")
    for folder in ("pipe", "bare"):
        assert loaded[folder]["names"] == ["AutoencoderDiTo", "DiToDiTTransformer2DModel"]
        torch.testing.assert_close(loaded[folder]["decoded"], expected["decoded"])
        torch.testing.assert_close(loaded[folder]["velocity"], expected["velocity"])


def write_package(root, files: dict) -> None:
    for name, source in files.items():
        path = root / "fakepkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))


@pytest.mark.parametrize(
    "files, message",
    [
        (  # diffusers copies only the files the auto_map module imports itself, for a local folder
            {"model.py": "from .helper import x\nclass Model: ...\n", "helper.py": "from .deeper import y\nx = y\n"},
            "must import deeper.py itself",
        ),
        (
            {
                "model.py": "from .sub.helper import x\nfrom .helper import y\nclass Model: ...\n",
                "helper.py": "y = 1\n",
            },
            "would both be helper.py",
        ),
        ({"model.py": "from . import helper\nclass Model: ...\n"}, "imports from the package"),
    ],
)
def test_code_that_cannot_load_from_one_flat_folder_is_refused_when_saved(tmp_path, monkeypatch, files, message):
    defaults = {"__init__.py": "", "helper.py": "x = 1\n", "deeper.py": "y = 1\n", "sub/__init__.py": ""}
    write_package(tmp_path, {**defaults, "sub/helper.py": "x = 1\n", **files})
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [name for name in sys.modules if name.startswith("fakepkg")]:
        del sys.modules[name]  # the package of the previous case
    importlib.invalidate_caches()
    from fakepkg.model import Model

    with pytest.raises(ValueError, match=message):
        code_bundle(Model)
