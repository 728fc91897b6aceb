"""LPIPS v0.1 (Zhang et al. 2018) from a local torchvision backbone and the heads torchmetrics ships."""

import importlib.resources
import os
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ._inputs import _batches, _check_pair
from .weights import LPIPS_BACKBONE_ENV, MissingWeightsError, _resolve_path

# torchvision's ImageNet checkpoints, the backbones the LPIPS heads were trained on.
LPIPS_BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}

# Adapted from richzhang/PerceptualSimilarity lpips/pretrained_networks.py and lpips/lpips.py. torchmetrics' LPIPS
# builds its backbone through torchvision (not a dependency here) and downloads the ImageNet weights, so the two
# backbones are written out below, with torchvision's layer indices so its checkpoints load as they are. The linear
# heads are the official v0.1 ones that torchmetrics ships inside its package.
_LPIPS_TAPS = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}  # ReLU outputs compared (torchvision indices)
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)


def _lpips_backbone(net_type: str) -> nn.Sequential:
    """`torchvision.models.{alexnet,vgg16}().features`, layer for layer."""
    if net_type == "alex":
        return nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        )  # fmt: skip
    layers, in_channels = [], 3
    for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if width == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU()]
            in_channels = width
    return nn.Sequential(*layers)


class _LPIPS(nn.Module):
    """LPIPS v0.1 (Zhang et al. 2018): Σ_l mean_hw ‖w_l ⊙ (ŷ_l(x) − ŷ_l(x₀))‖², ŷ = unit-normalised channels."""

    def __init__(self, net_type: str) -> None:
        super().__init__()
        self.features = _lpips_backbone(net_type)
        self.taps = _LPIPS_TAPS[net_type]
        channels = [self.features[tap - 1].out_channels for tap in self.taps]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT)[None, :, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE)[None, :, None, None], persistent=False)

    def _activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, out = (x - self.shift) / self.scale, []
        for index, layer in enumerate(self.features[: self.taps[-1] + 1]):
            x = layer(x)
            if index in self.taps:
                out.append(x / torch.sqrt(x.square().sum(dim=1, keepdim=True) + 1e-8))  # (B, C_l, h_l, w_l)
        return out

    def forward(self, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        pairs = zip(self.lins, self._activations(x), self._activations(reference))
        return sum(lin((a - b).square()).mean(dim=(1, 2, 3)) for lin, a, b in pairs)  # (B,)


def lpips_backbone_file(backbone: str | os.PathLike | None = None, net_type: str = "alex") -> Path:
    """The torchvision checkpoint LPIPS-`net_type` reads: `backbone`, else `$DITO_LPIPS_BACKBONE`, else torch's hub
    cache. Raises `MissingWeightsError` (one line that names the file) when there is none."""
    if net_type not in LPIPS_BACKBONE_FILES:
        raise ValueError(f"`net_type` must be one of {sorted(LPIPS_BACKBONE_FILES)}, got {net_type!r}.")
    filename = LPIPS_BACKBONE_FILES[net_type]
    path = _resolve_path(backbone, LPIPS_BACKBONE_ENV)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename  # where torchvision would have put it
    path = path if path is not None else cached if cached.is_file() else None
    if path is None or not path.is_file():
        where = "is not set" if path is None else f"points to '{path}', which is not a file"
        raise MissingWeightsError(
            f"LPIPS-{net_type} needs torchvision's ImageNet backbone: `backbone=` (`lpips_backbone=` in "
            f"compute_metrics) / ${LPIPS_BACKBONE_ENV} {where}; give the path to {filename} (or put it in "
            f"{cached.parent})."
        )
    return path


def read_lpips_backbone(path: str | os.PathLike, net_type: str = "alex") -> dict[str, torch.Tensor]:
    r"""
    The convolution weights of LPIPS-`net_type` from torchvision's ImageNet checkpoint at `path` (a whole model's, or
    its `features` alone), checked against the network: the state dict `_LPIPS.features` loads.

    Raises:
        `ValueError`: One line that names `path`: it is not a torch checkpoint that loads with `weights_only=True`
            (truncated, another format, or pickled objects beyond tensors), or it holds another network.
    """
    expected = _lpips_backbone(net_type).state_dict()
    name = f"{path}: not torchvision's {LPIPS_BACKBONE_FILES[net_type]}"
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged pickle fails in the unpickler in any of many ways (IndexError, KeyError, ...)
        # torch's own message suggests `weights_only=False`, which would run whatever the file pickled: not said here.
        raise ValueError(f"{name} (it does not load as a torch checkpoint of tensors: {type(err).__name__})") from None
    if not isinstance(state_dict, dict):
        raise ValueError(f"{name} (it holds a {type(state_dict).__name__}, not a state dict)")
    if any(key.startswith("features.") for key in state_dict):  # a whole torchvision model: keep the conv stack
        state_dict = {key.removeprefix("features."): v for key, v in state_dict.items() if key.startswith("features.")}
    for key, tensor in expected.items():
        found = state_dict.get(key)
        if not isinstance(found, torch.Tensor) or found.shape != tensor.shape:
            got = f"shape {tuple(found.shape)}" if isinstance(found, torch.Tensor) else "nothing"
            raise ValueError(f"{name} for LPIPS-{net_type} ({key}: expected shape {tuple(tensor.shape)}, got {got})")
    unexpected = sorted(set(state_dict) - set(expected))
    if unexpected:
        raise ValueError(f"{name} for LPIPS-{net_type} (it also holds {unexpected[0]})")
    return state_dict


def load_lpips(backbone: str | os.PathLike | None = None, net_type: Literal["alex", "vgg"] = "alex") -> nn.Module:
    r"""
    LPIPS v0.1 as a frozen module: `model(x, reference)` -> (B,) distances, differentiable in its inputs, so it
    serves as a training loss (the DiTo+LPIPS variant) as well as the [`lpips`] metric.

    Args:
        backbone (`str` or `os.PathLike`, *optional*): See [`lpips`].
        net_type (`str`, *optional*, defaults to `"alex"`): `"alex"` or `"vgg"`.

    Returns:
        `torch.nn.Module` in eval mode with `requires_grad=False` parameters, on the CPU.

    Raises:
        `MissingWeightsError`: No backbone checkpoint was found.
        `ValueError`: The checkpoint does not load, or holds another network ([`read_lpips_backbone`]).

    Examples:
        ```py
        >>> import torch
        >>> from diffusers_dito.metrics import MissingWeightsError, load_lpips

        >>> try:
        ...     load_lpips("no/such/vgg16-397923af.pth", net_type="vgg")
        ... except MissingWeightsError as err:
        ...     print(str(err).splitlines()[0][:47])
        LPIPS-vgg needs torchvision's ImageNet backbone

        ```
    """
    state_dict = read_lpips_backbone(lpips_backbone_file(backbone, net_type), net_type)
    model = _LPIPS(net_type)
    model.features.load_state_dict(state_dict)
    heads = importlib.resources.files("torchmetrics.functional.image") / "lpips_models" / f"{net_type}.pth"
    with importlib.resources.as_file(heads) as heads_path:
        heads_state = torch.load(heads_path, map_location="cpu", weights_only=True)
    model.lins.load_state_dict({f"{k}.weight": heads_state[f"lin{k}.model.1.weight"] for k in range(len(model.lins))})
    return model.eval().requires_grad_(False)


@torch.no_grad()
def lpips(
    reconstructions: torch.Tensor,
    originals: torch.Tensor,
    backbone: str | os.PathLike | None = None,
    net_type: Literal["alex", "vgg"] = "alex",
    batch_size: int = 64,
) -> float:
    r"""
    LPIPS v0.1 (Zhang et al. 2018), averaged over the batch: lower is more similar, 0 for identical images.

    The linear heads are the official ones, shipped inside torchmetrics; the ImageNet backbone is read from a local
    torchvision checkpoint, so results match `lpips` and torchmetrics' LPIPS. SqueezeNet is not supported.

    Args:
        reconstructions (`torch.Tensor` of shape `(B, 3, H, W)`): Images in [-1, 1] (LPIPS' own range), >= 32 px.
        originals (`torch.Tensor` of the same shape): Images in [-1, 1].
        backbone (`str` or `os.PathLike`, *optional*): torchvision's `alexnet-owt-7be5be79.pth` (or
            `vgg16-397923af.pth` for `net_type="vgg"`). Defaults to `$DITO_LPIPS_BACKBONE`, then to that file in
            torch's hub cache (`$TORCH_HOME/hub/checkpoints/`), where torchvision keeps what it once downloaded.
        net_type (`str`, *optional*, defaults to `"alex"`): `"alex"` (the LPIPS authors' choice as a metric) or
            `"vgg"`.
        batch_size (`int`, *optional*, defaults to 64): Image pairs per forward pass.

    Returns:
        `float`: Mean LPIPS.

    Raises:
        `MissingWeightsError`: No backbone checkpoint was found.

    Examples:
        ```py
        >>> import torch
        >>> from diffusers_dito.metrics import MissingWeightsError, lpips

        >>> x = torch.rand(1, 3, 64, 64) * 2 - 1
        >>> try:
        ...     lpips(x, x, backbone="no/such/alexnet-owt-7be5be79.pth")
        ... except MissingWeightsError as err:
        ...     print(str(err).splitlines()[0][:48])
        LPIPS-alex needs torchvision's ImageNet backbone

        ```
    """
    reconstructions, originals = _check_pair(
        "reconstructions", reconstructions, "originals", originals, min_size=32, channels=3
    )
    model = load_lpips(backbone, net_type).to(reconstructions.device)
    scores = [model(a, b) for a, b in zip(_batches(reconstructions, batch_size), _batches(originals, batch_size))]
    return float(torch.cat(scores).mean())
