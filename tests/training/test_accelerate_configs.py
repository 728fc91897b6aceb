"""The configs in accelerate_configs/: each loads with accelerate's own loader and launch-time checks, and each FSDP
one wraps blocks that exist in the model it is for. (The DDP one launches train_dito.py on 2 CPU processes in
test_train_dito.py's multi-process test, which checks the sharding and the synchronised weights too.)"""

from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_multi_gpu_env

from diffusers_dito import DIT_PRESETS, DITO_PRESETS, AutoencoderDiTo, DiToDiTTransformer2DModel

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "accelerate_configs"
EXPECTED = {  # file: (distributed_type, num_processes, num_machines)
    "single_gpu_bf16.yaml": ("NO", 1, 1),
    "ddp_8gpu.yaml": ("MULTI_GPU", 8, 1),
    "fsdp_8gpu_dito_xl.yaml": ("FSDP", 8, 1),
    "fsdp_8gpu_dit_xl.yaml": ("FSDP", 8, 1),
    "two_node_template.yaml": ("MULTI_GPU", 16, 2),
}


def launch_args(name: str):
    """The launcher's arguments after `accelerate launch --config_file <name> train.py` has merged the file in."""
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), "train.py"])
    args, _, _ = _validate_launch_command(args)  # private, but it is exactly what `accelerate launch` runs
    return args


def test_the_folder_holds_the_documented_configs():
    assert sorted(path.name for path in CONFIGS.iterdir()) == sorted(EXPECTED)
    docs = (REPO / "docs" / "training.md").read_text()
    assert [name for name in EXPECTED if f"accelerate_configs/{name}" not in docs] == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_as_accelerate_launch_reads_it(name):
    config = load_config_from_file(str(CONFIGS / name))  # raises on an unknown top-level key
    assert isinstance(config, ClusterConfig)
    assert (config.distributed_type, config.num_processes, config.num_machines) == EXPECTED[name]
    assert config.mixed_precision == "bf16" and not config.use_cpu
    launcher_options = {action.dest for action in launch_command_parser()._actions}
    # fsdp_config keys become launcher options; one the launcher does not know would be silently ignored
    assert set(config.fsdp_config) <= launcher_options
    args = launch_args(name)
    assert (args.num_processes, args.num_machines, args.mixed_precision) == (*EXPECTED[name][1:], "bf16")
    assert args.use_fsdp == (EXPECTED[name][0] == "FSDP")


@pytest.mark.parametrize(
    "name, model_class, model_config, blocks",
    [
        ("fsdp_8gpu_dito_xl.yaml", AutoencoderDiTo, DITO_PRESETS["dito-xl-f8c4"], 46),  # ResNets of encoder + UNet
        ("fsdp_8gpu_dit_xl.yaml", DiToDiTTransformer2DModel, DIT_PRESETS["dit-xl-2"], 28),  # transformer blocks
    ],
)
def test_fsdp_config_wraps_blocks_of_its_model(name, model_class, model_config, blocks, monkeypatch):
    # The FSDP_* variables `accelerate launch` hands the training processes, read back by accelerate's own plugin.
    for key, value in prepare_multi_gpu_env(launch_args(name)).items():
        if key.startswith("FSDP_"):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    # DiT reads block 0's embedding after every block has run: its blocks stay gathered until the backward pass.
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is (model_class is AutoencoderDiTo)
    with torch.device("meta"):
        model = model_class.from_config(model_config)
    plugin.set_auto_wrap_policy(model)  # raises if a class to wrap is not in the model
    wrapped = tuple(plugin.auto_wrap_policy.keywords["transformer_layer_cls"])
    assert sum(isinstance(module, wrapped) for module in model.modules()) == blocks
