"""Size presets for [`AutoencoderDiTo`], as `config.json`-compatible dicts.

Use them as `AutoencoderDiTo.from_config(DITO_PRESETS[name])`. The B/L/XL presets are the official architecture
(github.com/yinboc/dito, `configs/experiments/dito-{B,L,XL}-f8c4.yaml`): their decoders have exactly the official
parameter counts (162.780M, 338.524M, 620.941M), which `tests/models/test_presets.py` checks on the meta device, and
`scripts/convert_dito_to_diffusers.py` loads official checkpoints into them (docs/conversion.md).

`STUDENT_DECODER_PRESETS` are decoder-only overrides of a trained model's config, for the one-step students of
`training/distill_dito.py` (`--student_config NAME`).
"""

# The SD-VAE f8c4 encoder shared by every paper-sized preset: 4 levels (3 down-samplings), 2 ResNets per level.
_SD_VAE_F8C4_ENCODER = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512),
    "encoder_layers_per_block": 2,
    "encoder_norm_num_groups": 32,
}


def _paper_decoder(c0: int, c1: int, c2: int) -> dict:
    # Consistency-decoder layout: widths (c0, c1, c2, c2), 3 ResNets per level, a 1280-d time embedding read from a
    # 320-wide sinusoid with frequencies (1e-4)^(i / (160 - 1)), and the official latent layer norm's eps.
    return {
        "decoder_block_out_channels": (c0, c1, c2, c2),
        "decoder_layers_per_block": 3,
        "decoder_norm_num_groups": 32,
        "decoder_time_embedding_dim": 1280,
        "decoder_time_proj_dim": 320,
        "decoder_freq_shift": 1,
        "layer_norm_eps": 1e-5,
    }


DITO_PRESETS: dict[str, dict] = {
    "dito-b-f8c4": {**_SD_VAE_F8C4_ENCODER, **_paper_decoder(128, 256, 512)},  # decoder 162.8M
    "dito-l-f8c4": {**_SD_VAE_F8C4_ENCODER, **_paper_decoder(192, 384, 768)},  # decoder 338.5M
    "dito-xl-f8c4": {**_SD_VAE_F8C4_ENCODER, **_paper_decoder(320, 640, 1024)},  # decoder 620.9M
    # Small enough to train on a 2-core CPU in minutes (0.48M encoder + 4.41M decoder): same f8c4 structure.
    "dito-tiny": {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": (32, 64, 64, 64),
        "encoder_layers_per_block": 1,
        "encoder_norm_num_groups": 16,
        "decoder_block_out_channels": (32, 64, 96, 96),
        "decoder_layers_per_block": 2,
        "decoder_norm_num_groups": 16,
        "decoder_time_embedding_dim": 128,
        # The fewest Euler steps on the uniform grid within 0.3 dB PSNR of a 50-step decode with no worse SWD, on the
        # quality-against-NFE curve of a 3000-step dito-tiny (docs/benchmarks.md).
        "num_inference_steps": 4,
    },
    # The demo's model: dito-tiny's widths with one down-sampling level fewer, so a 32² crop gets an 8×8×4
    # latent (12× compression, against 48× for f8c4). At the CPU budget of the demo (~1000 steps) f8c4 reconstructs
    # held-out crops at SSIM 0.37, f4c4 at 0.59 (docs/results.md, "Choosing the demo's recipe"). 32 Euler steps: the
    # fewest whose high-frequency ratio (sharpness against the originals) was in [0.7, 1.4] in both demo runs (at 16
    # steps it was 0.81 in one run and 0.68 in another).
    "dito-cpu-f4c4": {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": (32, 64, 64),
        "encoder_layers_per_block": 1,
        "encoder_norm_num_groups": 16,
        "decoder_block_out_channels": (32, 64, 96),
        "decoder_layers_per_block": 2,
        "decoder_norm_num_groups": 16,
        "decoder_time_embedding_dim": 128,
        "num_inference_steps": 32,
    },
}


# Lighter decoders for distilled one-step students, as overrides of the teacher's config (`--student_config NAME` of
# training/distill_dito.py): only `decoder_*` keys, so the student keeps the teacher's encoder and latent space. The
# sizes are for the demo's dito-cpu-f4c4, whose decoder is (32, 64, 96) with 2 ResNets per level, 16 groups and a
# 128-d time embedding (2.77M parameters).
STUDENT_DECODER_PRESETS: dict[str, dict] = {
    "teacher": {},  # the teacher's own decoder
    "slim": {"decoder_layers_per_block": 1},  # dito-cpu-f4c4: 1.99M
    "lite": {  # dito-cpu-f4c4: 0.82M
        "decoder_block_out_channels": (16, 32, 64),
        "decoder_layers_per_block": 1,
        "decoder_norm_num_groups": 8,
    },
    "nano": {  # dito-cpu-f4c4: 0.33M
        "decoder_block_out_channels": (16, 32, 32),
        "decoder_layers_per_block": 1,
        "decoder_norm_num_groups": 8,
        "decoder_time_embedding_dim": 64,
    },
}
