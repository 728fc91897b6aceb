# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
r"""Conversion between checkpoints of the official DiTo code (github.com/yinboc/dito) and [`AutoencoderDiTo`].

The official trainer saves `ckpt-*.pth` files holding `{"model": {"name": "dito", "args": spec, "sd": state_dict},
"optimizers": ..., "config": ..., "iter": ...}`. The spec says what was built; the state dict holds the weights under
`encoder.0.*` (the SD-VAE encoder), `encoder.1.*` (a 1×1 "quant conv" after it), `renderer.net.*` (the consistency-
decoder UNet) and their EMA copies `encoder_ema.*`, `renderer_ema.*`. docs/conversion.md has the key table.

Three points of the official architecture need care; each is handled once, here:

- The decoder embeds t·1000 with a `pe_dim`-wide sinusoid (320 at every size) whose frequencies are
  `(1e-4)^(i / (half - 1))`, cosines first: `decoder_time_proj_dim = pe_dim`, `decoder_freq_shift = 1`.
- The encoder's 1×1 quant conv Q folds exactly into the encoder's last conv C: (Q∘C)(h) = Q_w·(C_w * h + C_b) + Q_b,
  so the folded weight is Q_w·C_w (over output channels) and the bias Q_w·C_b + Q_b. The reverse writes an identity Q.
- The official network predicts x − (1 − σ_min)·ε (its FM target `A·x + B·ε` with B = −(1 − σ_min)), and its Euler
  sampler steps x ← x + pred·(t_i − t_{i+1}). Ours predicts ε − x and diffusers steps x ← x + (σ_{i+1} − σ_i)·v. With
  v = −pred the two steps are the same arithmetic, so the conversion negates the network's last conv, once, in the
  weights. (The σ_min = 1e-5 in the official target is kept inside the converted weights, not reinterpreted.)

The latent layer norm has no weights; the official one has eps 1e-5 (`nn.LayerNorm`'s default), which the converted
config records as `layer_norm_eps`.

    >>> from diffusers_dito.conversion import config_from_spec, spec_from_config
    >>> spec = spec_from_config(config_from_spec(OFFICIAL_SPEC_EXAMPLE), resolution=256)
    >>> spec["args"]["renderer"]["args"]["net"]["args"]["pe_dim"], spec["args"]["z_shape"]
    (320, [4, 32, 32])
"""

import torch

from .models.autoencoder_dito import AutoencoderDiTo

# The official `vqgan_encoder` presets: the spec's encoder args are merged into one of these.
OFFICIAL_ENCODER_CONFIGS = {
    "f8c4": {"ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "z_channels": 4},
    "f16c8": {"ch": 128, "ch_mult": [1, 2, 4, 4, 4], "num_res_blocks": 2, "z_channels": 8},
}
_ENCODER_DEFAULTS = {"double_z": False, "attn_resolutions": [], "resamp_with_conv": True, "in_channels": 3}
OFFICIAL_GROUPS = 32  # every GroupNorm of the official encoder and decoder
OFFICIAL_DECODER_LEVELS, OFFICIAL_DECODER_LAYERS = 4, 3  # widths (c0, c1, c2, c2); 3 ResNets per down level
# Entries of an official state dict that only training uses: listed, never converted.
TRAINING_ONLY_PREFIXES = ("lpips_loss.", "zdm_", "drop_z_emb")

OFFICIAL_SPEC_EXAMPLE = {  # configs/experiments/dito-B-f8c4.yaml of the official code
    "name": "dito",
    "args": {
        "encoder": {"name": "vqgan_encoder", "args": {"config_name": "f8c4"}},
        "z_shape": [4, 32, 32],
        "z_layernorm": True,
        "decoder": {"name": "identity"},
        "renderer": {
            "name": "fixres_renderer_wrapper",
            "args": {
                "net": {
                    "name": "consistency_decoder_unet",
                    "args": {"in_channels": 3, "z_dec_channels": 4, "c0": 128, "c1": 256, "c2": 512, "pe_dim": 320,
                             "t_dim": 1280},
                }
            },
        },
        "render_diffusion": {"name": "fm", "args": {"timescale": 1000.0}},
        "render_sampler": {"name": "fm_euler_sampler"},
        "render_n_steps": 50,
        "loss_config": {},
    },
}  # fmt: skip


class ConversionError(ValueError):
    """A checkpoint or model this converter has no exact equivalent for; the message is one line naming the field."""


# ----------------------------------------------------------------------------------------------- spec <-> config
def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConversionError(message)


def _encoder_config(encoder: dict) -> dict:
    """Our encoder fields from the official `encoder` spec (a `vqgan_encoder`)."""
    _require(encoder.get("name") == "vqgan_encoder", f"model.args.encoder.name {encoder.get('name')!r}: expected "
             "'vqgan_encoder' (the SD-VAE encoder)")  # fmt: skip
    args = dict(encoder.get("args") or {})
    preset = args.pop("config_name", None)
    _require(preset in OFFICIAL_ENCODER_CONFIGS, f"model.args.encoder.args.config_name {preset!r}: expected one of "
             f"{sorted(OFFICIAL_ENCODER_CONFIGS)}")  # fmt: skip
    merged = {**_ENCODER_DEFAULTS, **OFFICIAL_ENCODER_CONFIGS[preset], **args}
    _require(not merged["double_z"], "model.args.encoder.args.double_z is true: KL (Gaussian) latents have no "
             "AutoencoderDiTo equivalent")  # fmt: skip
    _require(not merged["attn_resolutions"], f"model.args.encoder.args.attn_resolutions {merged['attn_resolutions']}:"
             " attention inside the encoder's down levels has no AutoencoderDiTo equivalent")  # fmt: skip
    _require(merged["resamp_with_conv"], "model.args.encoder.args.resamp_with_conv is false: expected strided convs")
    _require(merged.get("attn_type", "vanilla") == "vanilla" and not merged.get("use_linear_attn", False),
             "model.args.encoder.args.attn_type: expected vanilla attention in the middle block")  # fmt: skip
    ch = merged["ch"]
    return {
        "in_channels": merged["in_channels"],
        "latent_channels": merged["z_channels"],
        "block_out_channels": [ch * m for m in merged["ch_mult"]],
        "encoder_layers_per_block": merged["num_res_blocks"],
        "encoder_norm_num_groups": OFFICIAL_GROUPS,
    }


def _decoder_config(args: dict, latent_channels: int) -> dict:
    """Our decoder fields from the official `renderer` spec (a consistency-decoder UNet)."""
    renderer = args.get("renderer") or {}
    _require(renderer.get("name") == "fixres_renderer_wrapper", f"model.args.renderer.name {renderer.get('name')!r}: "
             "expected 'fixres_renderer_wrapper'")  # fmt: skip
    net = (renderer.get("args") or {}).get("net") or {}
    _require(net.get("name") == "consistency_decoder_unet", f"model.args.renderer.args.net.name {net.get('name')!r}: "
             "expected 'consistency_decoder_unet'")  # fmt: skip
    unet = {"in_channels": 3, "z_dec_channels": None, "c0": 320, "c1": 640, "c2": 1024, "pe_dim": 320, "t_dim": 1280}
    unet.update(net.get("args") or {})
    _require(unet["in_channels"] == 3, f"renderer net in_channels {unet['in_channels']}: expected 3 (RGB)")
    _require(unet["z_dec_channels"] == latent_channels, f"renderer net z_dec_channels {unet['z_dec_channels']}: "
             f"expected the latent's {latent_channels} channels")  # fmt: skip
    diffusion = args.get("render_diffusion") or {}
    timescale = float((diffusion.get("args") or {}).get("timescale", 1.0))
    _require(diffusion.get("name") == "fm" and timescale == 1000.0, f"model.args.render_diffusion {diffusion}: "
             "expected flow matching ('fm') with timescale 1000")  # fmt: skip
    sampler = (args.get("render_sampler") or {}).get("name")
    _require(sampler == "fm_euler_sampler", f"model.args.render_sampler.name {sampler!r}: expected 'fm_euler_sampler'")
    _require(args.get("renderer_guidance", 1) <= 1, "model.args.renderer_guidance > 1: decoder guidance has no "
             "AutoencoderDiTo equivalent")  # fmt: skip
    c0, c1, c2 = unet["c0"], unet["c1"], unet["c2"]
    return {
        "out_channels": 3,
        "decoder_block_out_channels": [c0, c1, c2, c2],
        "decoder_layers_per_block": OFFICIAL_DECODER_LAYERS,
        "decoder_norm_num_groups": OFFICIAL_GROUPS,
        "decoder_time_embedding_dim": unet["t_dim"],
        "decoder_time_proj_dim": unet["pe_dim"],
        "decoder_freq_shift": 1,
        "num_inference_steps": int(args.get("render_n_steps", 50)),
    }


def config_from_spec(spec: dict, num_inference_steps: int | None = None) -> dict:
    """
    The [`AutoencoderDiTo`] config of an official model spec (`ckpt["model"]`: `{"name": "dito", "args": ...}`).
    Raises a one-line [`ConversionError`] naming the field of a spec with no exact equivalent (KL or VQ latents,
    attention in the encoder's down levels, another renderer or diffusion).
    """
    name = spec.get("name") if isinstance(spec, dict) else type(spec).__name__
    _require(name == "dito", f"model.name {name!r}: expected 'dito' (this converts DiTo autoencoders)")
    args = spec.get("args") or {}
    _require(not args.get("z_gaussian", False), "model.args.z_gaussian is true: KL latents have no equivalent")
    _require(not args.get("z_quantizer", False), "model.args.z_quantizer is true: VQ latents have no equivalent")
    _require(args.get("z_layernorm", False), "model.args.z_layernorm is false: AutoencoderDiTo layer-normalises z")
    _require((args.get("decoder") or {}).get("name") == "identity", f"model.args.decoder {args.get('decoder')}: "
             "expected 'identity' (the renderer reads z directly)")  # fmt: skip
    config = _encoder_config(args.get("encoder") or {})
    z_shape = list(args.get("z_shape") or [])
    _require(z_shape[:1] == [config["latent_channels"]], f"model.args.z_shape {z_shape}: expected "
             f"{config['latent_channels']} channels first")  # fmt: skip
    config.update(_decoder_config(args, config["latent_channels"]))
    config["layer_norm_eps"] = 1e-5  # the official nn.LayerNorm's default
    if num_inference_steps is not None:
        config["num_inference_steps"] = num_inference_steps
    return config


def spec_from_config(config: dict, resolution: int = 256) -> dict:
    """
    The official model spec of an [`AutoencoderDiTo`] config, for images of `resolution` (the official latent layer
    norm has a fixed shape). Raises a one-line [`ConversionError`] where the official code cannot build the model.
    """
    with torch.device("meta"):
        full = dict(AutoencoderDiTo.from_config(config).config)  # with every default filled in
    widths = list(full["block_out_channels"])
    ch = widths[0]
    decoder = list(full["decoder_block_out_channels"])
    checks = {
        "in_channels and out_channels must be 3": full["in_channels"] == 3 and full["out_channels"] == 3,
        f"block_out_channels {widths} must be multiples of the first": all(w % ch == 0 for w in widths),
        "encoder and decoder norm groups must be 32": full["encoder_norm_num_groups"] == OFFICIAL_GROUPS
        and full["decoder_norm_num_groups"] == OFFICIAL_GROUPS,
        "the encoder needs its middle attention and SiLU": full["encoder_mid_block_add_attention"]
        and full["encoder_act_fn"] == "silu",
        f"decoder_block_out_channels {decoder} must be (c0, c1, c2, c2)": len(decoder) == OFFICIAL_DECODER_LEVELS
        and decoder[2] == decoder[3],
        "decoder_layers_per_block must be 3": full["decoder_layers_per_block"] == OFFICIAL_DECODER_LAYERS,
        "decoder_add_attention must be false": not full["decoder_add_attention"],
        "decoder_freq_shift must be 1 (the official sinusoid)": full["decoder_freq_shift"] == 1,
        "layer_norm_eps must be 1e-5 (the official layer norm)": full["layer_norm_eps"] == 1e-5,
        "resolution must be a multiple of the down-sampling factor": resolution % 2 ** (len(widths) - 1) == 0,
    }
    failed = [what for what, ok in checks.items() if not ok]
    if failed:
        raise ConversionError(f"the official code cannot build this model: {failed[0]}")
    z = resolution // 2 ** (len(widths) - 1)
    latent = full["latent_channels"]
    encoder_args = {
        "config_name": "f8c4",
        "ch": ch,
        "ch_mult": [w // ch for w in widths],
        "num_res_blocks": full["encoder_layers_per_block"],
        "z_channels": latent,
        "resolution": resolution,
    }
    net_args = {"in_channels": 3, "z_dec_channels": latent, "c0": decoder[0], "c1": decoder[1], "c2": decoder[2],
                "pe_dim": full["decoder_time_proj_dim"] or decoder[0],
                "t_dim": full["decoder_time_embedding_dim"] or 4 * decoder[0]}  # fmt: skip
    return {
        "name": "dito",
        "args": {
            "encoder": {"name": "vqgan_encoder", "args": encoder_args},
            "z_shape": [latent, z, z],
            "z_layernorm": True,
            "decoder": {"name": "identity"},
            "renderer": {
                "name": "fixres_renderer_wrapper",
                "args": {"net": {"name": "consistency_decoder_unet", "args": net_args}},
            },
            "render_diffusion": {"name": "fm", "args": {"timescale": 1000.0}},
            "render_sampler": {"name": "fm_euler_sampler"},
            "render_n_steps": full["num_inference_steps"],
            "loss_config": {},
        },
    }


# --------------------------------------------------------------------------------------------------- key mapping
_ENCODER_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
                   "nin_shortcut": "conv_shortcut"}  # fmt: skip
_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_DECODER_RESNET = {"f_t": "time_emb_proj", "gn_1": "norm1", "f_1": "conv1", "gn_2": "norm2", "f_2": "conv2",
                   "f_s": "conv_shortcut"}  # fmt: skip


def module_map(config: dict) -> list[tuple[str, str, dict[str, str]]]:
    """(official module prefix, our module prefix, {official child: our child}) for every module with weights;
    official prefixes are relative to the encoder (`encoder.0.`) or the renderer's net (`renderer.net.`)."""
    levels = len(config["block_out_channels"])
    pairs = [("encoder.0.conv_in", "encoder.conv_in", {}), ("encoder.0.norm_out", "encoder.conv_norm_out", {}),
             ("encoder.0.conv_out", "encoder.conv_out", {})]  # fmt: skip
    for i in range(levels):
        for j in range(config["encoder_layers_per_block"]):
            pairs.append((f"encoder.0.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", _ENCODER_RESNET))
        if i < levels - 1:
            pairs.append((f"encoder.0.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv", {}))
    pairs += [("encoder.0.mid.block_1", "encoder.mid_block.resnets.0", _ENCODER_RESNET),
              ("encoder.0.mid.block_2", "encoder.mid_block.resnets.1", _ENCODER_RESNET),
              ("encoder.0.mid.attn_1", "encoder.mid_block.attentions.0", _ATTENTION)]  # fmt: skip
    net, unet = "renderer.net", "decoder_unet"
    pairs += [(f"{net}.embed_image.f", f"{unet}.conv_in", {}),
              (f"{net}.embed_time.f_1", f"{unet}.time_embedding.linear_1", {}),
              (f"{net}.embed_time.f_2", f"{unet}.time_embedding.linear_2", {}),
              (f"{net}.output.gn", f"{unet}.conv_norm_out", {}),
              (f"{net}.output.f", f"{unet}.conv_out", {})]  # fmt: skip
    for i in range(OFFICIAL_DECODER_LEVELS):
        for j in range(OFFICIAL_DECODER_LAYERS):
            pairs.append((f"{net}.down.{i}.{j}", f"{unet}.down_blocks.{i}.resnets.{j}", _DECODER_RESNET))
        if i < OFFICIAL_DECODER_LEVELS - 1:
            pairs.append((f"{net}.down.{i}.3", f"{unet}.down_blocks.{i}.downsamplers.0", _DECODER_RESNET))
        # The official `up` list is applied last to first; diffusers' `up_blocks` first to last.
        official_up = f"{net}.up.{OFFICIAL_DECODER_LEVELS - 1 - i}"
        for j in range(OFFICIAL_DECODER_LAYERS + 1):
            pairs.append((f"{official_up}.{j}", f"{unet}.up_blocks.{i}.resnets.{j}", _DECODER_RESNET))
        if i < OFFICIAL_DECODER_LEVELS - 1:
            pairs.append((f"{official_up}.{OFFICIAL_DECODER_LAYERS + 1}", f"{unet}.up_blocks.{i}.upsamplers.0",
                          _DECODER_RESNET))  # fmt: skip
    pairs += [(f"{net}.mid.{j}", f"{unet}.mid_block.resnets.{j}", _DECODER_RESNET) for j in range(2)]
    return pairs


def key_map(config: dict, our_keys: list[str]) -> dict[str, str]:
    """Our state-dict key -> the official key (without EMA prefixes), for every key of our model."""
    by_prefix = sorted(module_map(config), key=lambda pair: -len(pair[1]))  # the longest prefix wins
    mapping = {}
    for key in our_keys:
        for official, ours, children in by_prefix:
            if key.startswith(ours + "."):
                rest = key[len(ours) + 1 :]
                child, _, param = rest.rpartition(".")
                if child == "" or child in children.values():
                    inverse = {v: k for k, v in children.items()}
                    mapped = f"{official}.{inverse[child]}.{param}" if child else f"{official}.{param}"
                    mapping[key] = mapped
                    break
        else:
            raise ConversionError(f"no official counterpart for {key}")
    return mapping


def _is_attention_projection(key: str) -> bool:
    return ".attentions.0." in key and any(f".{name}.weight" in key for name in ("to_q", "to_k", "to_v", "to_out.0"))


# ---------------------------------------------------------------------------------------------------- weights
def official_to_diffusers(
    state_dict: dict[str, torch.Tensor], config: dict, use_ema: bool = False
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """
    Our state dict from an official one, and the official keys left over as training-only entries (unused EMA
    copies, LPIPS, the latent DiT's `zdm_*`). Raises a one-line [`ConversionError`] for a missing, mis-shaped or
    unknown key.
    """
    prefixes = {"encoder.": "encoder.", "renderer.": "renderer."}
    if use_ema:  # take each EMA copy where the checkpoint has one
        prefixes = {p: p[:-1] + "_ema." if any(k.startswith(p[:-1] + "_ema.") for k in state_dict) else p
                    for p in prefixes}  # fmt: skip
    with torch.device("meta"):
        ours = AutoencoderDiTo.from_config(config).state_dict()
    converted, used = {}, set()
    for key, official in key_map(config, list(ours)).items():
        source = next(prefixes[p] + official[len(p) :] for p in prefixes if official.startswith(p))
        _require(source in state_dict, f"the checkpoint has no {source} (needed for {key})")
        tensor = state_dict[source]
        used.add(source)
        if _is_attention_projection(key):
            tensor = tensor.reshape(tensor.shape[0], tensor.shape[1])  # 1×1 conv -> linear
        if key.startswith("decoder_unet.conv_out."):
            tensor = -tensor  # official x − (1 − σ_min)·ε -> ours ε − x (module docstring)
        _require(tuple(tensor.shape) == tuple(ours[key].shape), f"{source} has shape {tuple(tensor.shape)}, "
                 f"expected {tuple(ours[key].shape)} for {key}")  # fmt: skip
        converted[key] = tensor.clone()
    quant = prefixes["encoder."] + "1."
    _require(quant + "weight" in state_dict and quant + "bias" in state_dict, f"the checkpoint has no {quant}weight "
             "(the encoder's 1×1 quant conv)")  # fmt: skip
    used |= {quant + "weight", quant + "bias"}
    q_w, q_b = state_dict[quant + "weight"][:, :, 0, 0], state_dict[quant + "bias"]  # (C, C), (C,)
    identity = torch.equal(q_w, torch.eye(len(q_w), dtype=q_w.dtype)) and not q_b.any()
    if not identity:  # fold Q into the encoder's last conv (module docstring)
        w, b = converted["encoder.conv_out.weight"], converted["encoder.conv_out.bias"]
        converted["encoder.conv_out.weight"] = torch.einsum("oc,cikl->oikl", q_w.double(), w.double()).to(w.dtype)
        converted["encoder.conv_out.bias"] = (q_w.double() @ b.double() + q_b.double()).to(b.dtype)
    # Left over: training-only entries, and the copy (weights or EMA) that was not taken, where the taken one was used.
    copies = {"encoder.": "encoder_ema.", "renderer.": "renderer_ema."}
    not_taken = {(alt if prefixes[base] == base else base): prefixes[base] for base, alt in copies.items()}

    def is_known(key: str) -> bool:
        copy = next((p for p in not_taken if key.startswith(p)), None)
        return key.startswith(TRAINING_ONLY_PREFIXES) or (
            copy is not None and not_taken[copy] + key[len(copy) :] in used
        )

    leftover = sorted(set(state_dict) - used)
    known = [key for key in leftover if is_known(key)]
    unknown = [key for key in leftover if not is_known(key)]
    _require(not unknown, f"{len(unknown)} checkpoint entries have no place in AutoencoderDiTo: {unknown[:3]}")
    return converted, known


def diffusers_to_official(state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """An official state dict from ours: the exact inverse of `official_to_diffusers`, with an identity quant conv."""
    official = {}
    for key, name in key_map(config, list(state_dict)).items():
        tensor = state_dict[key]
        if _is_attention_projection(key):
            tensor = tensor[:, :, None, None]  # linear -> 1×1 conv
        if key.startswith("decoder_unet.conv_out."):
            tensor = -tensor
        official[name] = tensor.clone()
    channels, dtype = state_dict["encoder.conv_out.weight"].shape[0], state_dict["encoder.conv_out.weight"].dtype
    official["encoder.1.weight"] = torch.eye(channels, dtype=dtype)[:, :, None, None]
    official["encoder.1.bias"] = torch.zeros(channels, dtype=dtype)
    return official


# ---------------------------------------------------------------------------------------------------- checkpoints
def load_official_checkpoint(path: str) -> dict:
    """
    An official `ckpt-*.pth`, loaded with `torch.load(weights_only=True)`: tensors and plain containers only, so a
    file that carries pickled code is refused (one-line [`ConversionError`]), as everywhere else in the package.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConversionError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConversionError(f"{path} is a folder, not a checkpoint file") from None
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... for what it will not load
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConversionError(f"{path} is not a checkpoint of tensors and plain containers ({first[:160]})") from None
    model = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    _require(isinstance(model, dict) and isinstance(model.get("sd"), dict), f"{path} has no model spec and state dict "
             "(expected the official trainer's {'model': {'name', 'args', 'sd'}, ...})")  # fmt: skip
    return checkpoint
