"""DiT size presets (Peebles & Xie, Table 1) for [`DiToDiTTransformer2DModel`], as `config.json`-compatible dicts.

All use patch size 2 and 64-d heads on a 4×32×32 latent (256² images through an f8c4 DiTo). DiT-XL/2 is the
paper's generator: 28 layers, hidden size 1152, 16 heads. `out_channels == in_channels`: the model predicts the
flow-matching velocity, not a learned variance.
"""


def _dit(num_layers: int, hidden_size: int, num_heads: int, **overrides) -> dict:
    config = {
        "num_layers": num_layers,
        "num_attention_heads": num_heads,
        "attention_head_dim": hidden_size // num_heads,
        "in_channels": 4,
        "out_channels": 4,
        "patch_size": 2,
        "sample_size": 32,
        "num_embeds_ada_norm": 1000,  # ImageNet classes; index 1000 is the CFG null class
    }
    config.update(overrides)
    return config


DIT_PRESETS: dict[str, dict] = {
    "dit-s-2": _dit(12, 384, 6),
    "dit-b-2": _dit(12, 768, 12),
    "dit-l-2": _dit(24, 1024, 16),
    "dit-xl-2": _dit(28, 1152, 16),
    # CPU-sized: 32² images through dito-tiny give 4×4 latents; 10 classes.
    "dit-tiny": _dit(2, 64, 2, sample_size=4, num_embeds_ada_norm=10),
}
