#!/usr/bin/env python
# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
r"""Check the converters against the official DiTo code itself (github.com/yinboc/dito): the numbers of
docs/conversion.md. Not part of the test suite: it needs a checkout of the official code and its `omegaconf` and
`einops` (torchvision and timm, which the official code imports only for LPIPS and its latent DiT, are stubbed).

    git clone https://github.com/yinboc/dito /tmp/official-dito && pip install omegaconf einops
    python scripts/check_against_official_dito.py --official_code /tmp/official-dito

It builds a small DiTo with the official code (random weights, EMA copies that differ from them), saves it in the
official trainer's checkpoint layout, converts it with `convert_dito_to_diffusers.py` (with and without `--use_ema`),
and compares the latents, one decoder evaluation and a 4-step Euler decode from the same noise. Then it converts the
result back with `convert_diffusers_to_dito.py`, rebuilds it with the official `models.make` and a strict
`load_state_dict`, and compares the two official models.
"""

import argparse
import copy
import importlib.util
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch

from diffusers_dito import DiToPipeline

SCRIPTS = Path(__file__).resolve().parent
SPEC_ARGS = {  # a small official DiTo: 32 px images, 4×4×4 latents, a 320-wide sinusoid as at every official size
    "encoder": {"name": "vqgan_encoder", "args": {"config_name": "f8c4", "ch": 32, "ch_mult": [1, 2, 2, 2],
                                                  "num_res_blocks": 1}},
    "z_shape": [4, 4, 4], "z_layernorm": True, "zaug_p": 0.1, "zaug_decoding_loss_type": "suffix",
    "zaug_zdm_diffusion": {"name": "fm", "args": {"timescale": 1000.0}},
    "decoder": {"name": "identity"},
    "renderer": {"name": "fixres_renderer_wrapper", "args": {"net": {"name": "consistency_decoder_unet", "args": {
        "in_channels": 3, "z_dec_channels": 4, "c0": 32, "c1": 64, "c2": 64, "pe_dim": 320, "t_dim": 128}}}},
    "render_diffusion": {"name": "fm", "args": {"timescale": 1000.0}}, "render_sampler": {"name": "fm_euler_sampler"},
    "render_n_steps": 4, "loss_config": {}, "renderer_ema_rate": 0.999, "encoder_ema_rate": 0.999,
}  # fmt: skip


def import_official(path: str):
    """The official `models` package; torchvision and timm are stubbed (used only by its LPIPS and latent DiT)."""
    for name in ("torchvision", "torchvision.models", "torchvision.transforms", "timm", "timm.models"):
        sys.modules.setdefault(name, types.ModuleType(name))
    vit = types.ModuleType("timm.models.vision_transformer")
    vit.PatchEmbed = vit.Attention = vit.Mlp = object
    sys.modules.setdefault("timm.models.vision_transformer", vit)
    # The official code imports its package as the top-level `models`: register it under that name, from its folder.
    init = Path(path) / "models" / "__init__.py"
    spec = importlib.util.spec_from_file_location("models", init, submodule_search_locations=[str(init.parent)])
    models = importlib.util.module_from_spec(spec)
    sys.modules["models"] = models
    spec.loader.exec_module(models)
    return models


def run(script: str, *argv: str) -> None:
    result = subprocess.run([sys.executable, str(SCRIPTS / script), *argv], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    print("  " + result.stdout.strip().replace("\n", "\n  "))


@torch.no_grad()
def compare(model, vae, use_ema: bool) -> None:
    model.use_ema_encoder = model.use_ema_renderer = use_ema
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z_official, z_ours = model.encode(x), vae.encode(x).latents
    noise = vae.initial_noise(z_ours, torch.Generator().manual_seed(7))
    renderer = model.renderer_ema if use_ema else model.renderer
    t = torch.full((3,), 0.6)
    pred = renderer(noise, t=t * 1000, z_dec=z_official)  # x − (1 − σ_min)·ε
    velocity = vae.predict_velocity(noise, t * 1000, vae.upsample_latents(z_official))  # ε − x
    sample = model.render_sampler.sample(net=renderer, shape=noise.shape, n_steps=4, net_kwargs={"z_dec": z_official},
                                         noise=noise.clone())  # fmt: skip
    ours = vae.decode(z_ours, generator=torch.Generator().manual_seed(7), num_inference_steps=4).sample  # clamped
    print(f"  --use_ema {use_ema}: latents max|Δ| {(z_official - z_ours).abs().max():.1e} (max |z| "
          f"{z_official.abs().max():.2f}); one decoder evaluation max|v + pred| {(velocity + pred).abs().max():.1e} "
          f"(max |v| {velocity.abs().max():.2f}); 4-step Euler decode max|Δ| "
          f"{(sample.clamp(-1, 1) - ours).abs().max():.1e}")  # fmt: skip
    model.use_ema_encoder = model.use_ema_renderer = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official_code", required=True, help="A checkout of github.com/yinboc/dito.")
    models = import_official(parser.parse_args().official_code)
    torch.manual_seed(0)
    model = models.make({"name": "dito", "args": copy.deepcopy(SPEC_ARGS)}).eval()
    with torch.no_grad():
        for p in model.parameters():  # EMA copies start equal to the weights: make every tensor differ
            p.add_(torch.randn_like(p) * 0.02)
    tmp = Path(tempfile.mkdtemp())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    checkpoint = {
        "config": {"model": SPEC_ARGS},
        "model": {"name": "dito", "args": SPEC_ARGS, "sd": model.state_dict()},
        "optimizers": {"encoder": {"name": "adamw", "args": {"lr": 1e-4}, "sd": optimizer.state_dict()}},
        "iter": 100,
        "train_loader_epoch": 1,
        "ckpt_select_v": 0,
    }
    torch.save(checkpoint, tmp / "ckpt-100.pth")  # what the official trainer's save_ckpt writes
    print(f"official model: {sum(p.numel() for p in model.renderer.parameters()) / 1e6:.3f}M-parameter renderer")
    for use_ema in (False, True):
        out = tmp / f"converted-ema{int(use_ema)}"
        run("convert_dito_to_diffusers.py", "--checkpoint_path", str(tmp / "ckpt-100.pth"), "--output_path", str(out),
            "--verify", *(["--use_ema"] if use_ema else []))  # fmt: skip
        compare(model, DiToPipeline.from_pretrained(str(out)).vae.eval(), use_ema)
    run("convert_diffusers_to_dito.py", "--model_path", str(tmp / "converted-ema0"),
        "--output_path", str(tmp / "back.pth"), "--resolution", "32")  # fmt: skip
    back = torch.load(tmp / "back.pth", weights_only=True)
    rebuilt = models.make(back["model"])
    rebuilt.load_state_dict(back["model"]["sd"], strict=True)
    rebuilt.eval()
    with torch.no_grad():
        x, noise = torch.rand(2, 3, 32, 32) * 2 - 1, torch.randn(2, 3, 32, 32)
        z_a, z_b = model.encode(x), rebuilt.encode(x)
        a, b = (m.render_sampler.sample(net=m.renderer, shape=noise.shape, n_steps=4, net_kwargs={"z_dec": z},
                                        noise=noise.clone()) for m, z in ((model, z_a), (rebuilt, z_b)))  # fmt: skip
    print(
        f"  back to the official code (strict load_state_dict): latents max|Δ| {(z_a - z_b).abs().max():.1e}, "
        f"4-step Euler decode max|Δ| {(a - b).abs().max():.1e}"
    )


if __name__ == "__main__":
    main()
