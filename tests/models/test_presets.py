import pytest
import torch

from diffusers_dito import DITO_PRESETS, STUDENT_DECODER_PRESETS, AutoencoderDiTo

PAPER_DECODER_PARAMS = {"dito-b-f8c4": 162.8e6, "dito-l-f8c4": 338.5e6, "dito-xl-f8c4": 620.9e6}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", sorted(PAPER_DECODER_PARAMS))
def test_paper_presets_match_decoder_parameter_counts(name):
    with torch.device("meta"):
        vae = AutoencoderDiTo.from_config(DITO_PRESETS[name])
    n = count(vae.decoder_unet)
    assert abs(n - PAPER_DECODER_PARAMS[name]) / PAPER_DECODER_PARAMS[name] < 0.005, n
    assert vae.config.latent_channels == 4 and vae.downsample_factor == 8
    assert tuple(vae.config.block_out_channels) == (128, 256, 512, 512)  # SD-VAE f8 encoder
    assert vae.config.encoder_layers_per_block == 2


def test_tiny_preset_is_cpu_sized():
    vae = AutoencoderDiTo.from_config(DITO_PRESETS["dito-tiny"])
    assert 1e6 <= count(vae) <= 5e6
    assert vae.downsample_factor == 8


def test_student_decoder_presets_are_lighter_decoders_of_the_demo_model():
    teacher_config = DITO_PRESETS["dito-cpu-f4c4"]
    with torch.device("meta"):
        teacher = AutoencoderDiTo.from_config(teacher_config)
        students = {
            name: AutoencoderDiTo.from_config({**teacher_config, **o}) for name, o in STUDENT_DECODER_PRESETS.items()
        }
    assert STUDENT_DECODER_PRESETS["teacher"] == {}
    assert all(key.startswith("decoder_") for overrides in STUDENT_DECODER_PRESETS.values() for key in overrides)
    sizes = [count(students[name].decoder_unet) for name in ("teacher", "slim", "lite", "nano")]
    assert sizes[0] == count(teacher.decoder_unet) and sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4
    assert all(count(student.encoder) == count(teacher.encoder) for student in students.values())
