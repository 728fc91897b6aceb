"""DiTo's training objective: one flow-matching L2 loss, with optional noise synchronisation; and the band-weighted
L2 and the patch sliced-Wasserstein term of decoder distillation."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .metrics.swd import laplacian_pyramid, random_unit_directions
from .models.autoencoder_dito import AutoencoderDiTo


@dataclass
class DiToLossOutput(BaseOutput):
    r"""
    Output of [`dito_flow_matching_loss`]. Always the same fields, whatever the arguments.

    Args:
        loss (`torch.Tensor`, scalar): Mean of `per_sample_loss`; the value to back-propagate.
        per_sample_loss (`torch.Tensor` of shape `(B,)`): Mean squared velocity error of each sample.
        t (`torch.Tensor` of shape `(B,)`): The decoder's flow time of each sample, in [0, 1].
        tau (`torch.Tensor` of shape `(B,)`): The latent's noise level; 0 where noise sync was not applied.
        noise_synced (`torch.Tensor` of shape `(B,)`, bool): Which samples got a noised latent.
        flow_loss (`torch.Tensor` of shape `(B,)`): The flow-matching term of `per_sample_loss`.
        lpips_loss (`torch.Tensor` of shape `(B,)`): LPIPS of the one-step estimate x̂ = x_t − t·v against x
            (unweighted); zeros when no LPIPS model is given.
    """

    loss: torch.Tensor
    per_sample_loss: torch.Tensor
    t: torch.Tensor
    tau: torch.Tensor
    noise_synced: torch.Tensor
    flow_loss: torch.Tensor
    lpips_loss: torch.Tensor


def _interpolate(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The flow-matching path x_t = (1 − t)·x + t·ε, with one `t` per sample."""
    t = t.view(-1, 1, 1, 1).to(x.dtype)
    return (1.0 - t) * x + t * noise  # (B, ...)


def _noised_batch(vae: AutoencoderDiTo, images: torch.Tensor, noise_sync_prob: float, generator) -> tuple:
    r"""
    Steps 1–3 of [`dito_flow_matching_loss`]: the latent z = LN(E(x)), noise-synchronised per sample with probability
    `noise_sync_prob`: τ ~ U[0, 1], z ← (1 − τ)·z + τ·ε_z, and the decoder's time drawn from U[τ, 1], so that the
    decoder is never asked to be cleaner than its latent; otherwise τ = 0 and t ~ U[0, 1]. Then x_t = (1 − t)·x + t·ε.

    Returns `(z, x_t, ε − x, t, τ, synced)`: the latent, the noisy images, the velocity target, and per sample the
    decoder's time, the latent's noise level and whether it was noise-synchronised.
    """
    if not 0.0 <= noise_sync_prob <= 1.0:
        raise ValueError(f"`noise_sync_prob` must be in [0, 1], got {noise_sync_prob}.")
    # `encode` minus its two finiteness checks: each waits for the device every step and splits a torch.compile
    # graph, and training handles non-finite values itself (the step is skipped). Shapes are still checked.
    vae.check_images(images, finite=False)
    z = vae._encode(images)  # (B, C, h, w)
    batch_size, device = images.shape[0], images.device
    uniform = torch.rand(3, batch_size, generator=generator, device=generator.device if generator else device)
    uniform = uniform.to(device=device, dtype=torch.float32)  # (3, B): sync coin, τ, t
    noise_synced = uniform[0] < noise_sync_prob  # (B,)
    tau = torch.where(noise_synced, uniform[1], torch.zeros_like(uniform[1]))  # (B,)
    t = tau + (1.0 - tau) * uniform[2]  # (B,): U[τ, 1], i.e. U[0, 1] where τ = 0
    z = _interpolate(z, randn_tensor(z.shape, generator=generator, device=device, dtype=z.dtype), tau)
    noise = randn_tensor(images.shape, generator=generator, device=device, dtype=images.dtype)
    return z, _interpolate(images, noise, t), noise - images, t, tau, noise_synced


def _one_step_lpips(lpips_model: Callable, noisy: torch.Tensor, t: torch.Tensor, pred: torch.Tensor, images):
    """Step 5 of [`dito_flow_matching_loss`]: LPIPS(x̂, x) of the model's one-step guess x̂ = x_t − t·v, per sample."""
    estimate = noisy.float() - t.view(-1, 1, 1, 1) * pred.float()  # (B, 3, H, W)
    return lpips_model(estimate, images.float()).float()  # (B,)


def dito_flow_matching_loss(
    vae: AutoencoderDiTo,
    images: torch.Tensor,
    noise_sync_prob: float = 0.0,
    generator: torch.Generator | None = None,
    lpips_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    lpips_weight: float = 0.0,
) -> DiToLossOutput:
    r"""
    The DiTo objective (paper Sec. 3), trained jointly through encoder and decoder:

    1. z = LN(E(x)).
    2. Noise synchronisation, with probability `noise_sync_prob` per sample: τ ~ U[0, 1], z ← (1 − τ)·z + τ·ε_z,
       and the decoder's time t ~ U[τ, 1]. Otherwise τ = 0 and t ~ U[0, 1].
    3. x_t = (1 − t)·x + t·ε.
    4. L = ‖D(x_t, t, z) − (ε − x)‖², averaged per sample, then over the batch (ε − x: the schedulers' velocity).
    5. Optionally (the paper's DiTo+LPIPS variant), + `lpips_weight` · LPIPS(x̂, x) with x̂ = x_t − t·D(x_t, t, z),
       the model's one-step guess of x (exact when D predicts ε − x).

    Args:
        vae (`AutoencoderDiTo`): The model to train.
        images (`torch.Tensor` of shape `(B, 3, H, W)`): Training images in [-1, 1].
        noise_sync_prob (`float`, *optional*, defaults to 0.0): Probability p of noise synchronisation (paper: 0.1).
        generator (`torch.Generator`, *optional*): Source of all randomness here, for reproducible steps.
        lpips_model (`Callable`, *optional*): (B, 3, H, W) × (B, 3, H, W) in [-1, 1] -> (B,) perceptual distance,
            differentiable in its first argument, e.g. [`~metrics.load_lpips`]. Required when `lpips_weight > 0`.
        lpips_weight (`float`, *optional*, defaults to 0.0): Weight of the LPIPS term (paper: 0.5).

    Returns:
        [`DiToLossOutput`].

    Examples:
        ```py
        >>> import torch
        >>> from diffusers_dito import AutoencoderDiTo, DITO_PRESETS, dito_flow_matching_loss

        >>> vae = AutoencoderDiTo.from_config(DITO_PRESETS["dito-tiny"])
        >>> dito_flow_matching_loss(vae, torch.rand(2, 3, 32, 32) * 2 - 1, noise_sync_prob=0.1).per_sample_loss.shape
        torch.Size([2])

        ```
    """
    if lpips_weight < 0 or (lpips_weight > 0 and lpips_model is None):
        raise ValueError(f"`lpips_weight` must be >= 0 and needs `lpips_model`, got {lpips_weight} and {lpips_model}.")
    z, noisy, target, t, tau, noise_synced = _noised_batch(vae, images, noise_sync_prob, generator)
    pred = vae.predict_velocity(noisy, t * 1000.0, vae.upsample_latents(z))  # timestep as σ·1000
    flow_loss = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))  # (B,)
    per_sample_loss, lpips_loss = flow_loss, torch.zeros_like(flow_loss)
    if lpips_weight > 0:  # skipped at 0, so that the loss stays bit-identical to the plain objective
        lpips_loss = _one_step_lpips(lpips_model, noisy, t, pred, images)
        per_sample_loss = flow_loss + lpips_weight * lpips_loss
    return DiToLossOutput(
        loss=per_sample_loss.mean(),
        per_sample_loss=per_sample_loss,
        t=t,
        tau=tau,
        noise_synced=noise_synced,
        flow_loss=flow_loss,
        lpips_loss=lpips_loss,
    )


@dataclass
class LatentFlowMatchingLossOutput(BaseOutput):
    r"""
    Output of [`latent_flow_matching_loss`].

    Args:
        loss (`torch.Tensor`, scalar): Mean of `per_sample_loss`.
        per_sample_loss (`torch.Tensor` of shape `(B,)`): Mean squared velocity error of each sample.
        t (`torch.Tensor` of shape `(B,)`): Flow time of each sample, in [0, 1].
        dropped (`torch.Tensor` of shape `(B,)`, bool): Samples whose class was replaced by the null class.
    """

    loss: torch.Tensor
    per_sample_loss: torch.Tensor
    t: torch.Tensor
    dropped: torch.Tensor


def latent_flow_matching_loss(
    transformer: torch.nn.Module,
    latents: torch.Tensor,
    class_labels: torch.Tensor,
    num_classes: int,
    class_dropout_prob: float = 0.1,
    generator: torch.Generator | None = None,
) -> LatentFlowMatchingLossOutput:
    r"""
    Class-conditional flow matching on (scaled) DiTo latents, for the generation stage:

    z_t = (1 − t)·z + t·ε with t ~ U[0, 1], and L = ‖DiT(z_t, t·1000, c) − (ε − z)‖². The class is replaced by
    the null class `num_classes` with probability `class_dropout_prob`, which trains the unconditional branch that
    classifier-free guidance needs. The target ε − z is what diffusers' flow-match schedulers step with, so
    [`DiToDiTPipeline`] samples the trained model with a stock scheduler.

    Args:
        transformer: A [`DiToDiTTransformer2DModel`] (or any module with its call signature).
        latents (`torch.Tensor` of shape `(B, C, h, w)`): `(z − shift_factor) · scaling_factor`.
        class_labels (`torch.Tensor` of shape `(B,)`): Class ids in `[0, num_classes)`.
        num_classes (`int`): Number of real classes; index `num_classes` is the null class.
        class_dropout_prob (`float`, *optional*, defaults to 0.1): Probability of dropping the class label.
        generator (`torch.Generator`, *optional*): Source of all randomness here.

    Examples:
        ```py
        >>> import torch
        >>> from diffusers_dito import DIT_PRESETS, DiToDiTTransformer2DModel, latent_flow_matching_loss

        >>> dit = DiToDiTTransformer2DModel.from_config(DIT_PRESETS["dit-tiny"])
        >>> out = latent_flow_matching_loss(dit, torch.randn(2, 4, 4, 4), torch.tensor([0, 3]), num_classes=10)
        >>> out.per_sample_loss.shape
        torch.Size([2])

        ```
    """
    if not 0.0 <= class_dropout_prob <= 1.0:
        raise ValueError(f"`class_dropout_prob` must be in [0, 1], got {class_dropout_prob}.")
    batch_size, device = latents.shape[0], latents.device
    uniform = torch.rand(2, batch_size, generator=generator, device=generator.device if generator else device)
    uniform = uniform.to(device=device, dtype=torch.float32)  # (2, B): dropout coin, t
    dropped = uniform[0] < class_dropout_prob  # (B,)
    labels = torch.where(dropped, torch.full_like(class_labels, num_classes), class_labels)  # (B,)
    t = uniform[1]  # (B,)
    noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    noisy = _interpolate(latents, noise, t)  # (B, C, h, w)
    pred = transformer(noisy, timestep=t * 1000.0, class_labels=labels).sample  # (B, C, h, w)
    per_sample_loss = (pred.float() - (noise - latents).float()).pow(2).mean(dim=(1, 2, 3))  # (B,)
    return LatentFlowMatchingLossOutput(
        loss=per_sample_loss.mean(), per_sample_loss=per_sample_loss, t=t, dropped=dropped
    )


def _check_same_shape(sample: torch.Tensor, target: torch.Tensor) -> None:
    if sample.shape != target.shape or sample.ndim != 4:
        raise ValueError(
            f"Expected `sample` and `target` of one shape (B, C, H, W), got {sample.shape} and {target.shape}."
        )


def laplacian_l2_loss(
    sample: torch.Tensor, target: torch.Tensor, num_levels: int = 3, fine_weight: float = 4.0
) -> torch.Tensor:
    r"""
    Band-weighted L2: the mean squared difference of each Laplacian-pyramid level of `sample` and `target`, the
    finest band weighted `fine_weight` and the others 1, the weights normalised to average 1. With `fine_weight=1`
    every band counts alike.

    Written for decoder distillation (`training/distill_dito.py --loss_type laplacian`): a plain L2 between a 1-step
    student's decode and its teacher's is dominated by the low frequencies, and the student learns the teacher's
    fine grain last; weighting the finest band (one octave, the pixel scale) makes it learn that grain sooner. The
    pyramid is the SWD metric's (`diffusers_dito.metrics.swd.laplacian_pyramid`), so the loss weights the band whose
    patch statistics that metric's finest level compares.

    Args:
        sample (`torch.Tensor` of shape `(B, C, H, W)`): The prediction.
        target (`torch.Tensor` of the same shape): What it should equal.
        num_levels (`int`, *optional*, defaults to 3): Pyramid levels: `num_levels − 1` band-pass levels and the
            low-pass residual. Each halving needs a side of at least 3 px.
        fine_weight (`float`, *optional*, defaults to 4.0): Weight of the finest band against 1 for the others.

    Returns:
        `torch.Tensor` of shape `(B,)`: the loss of each sample.

    Examples:
        ```py
        >>> import torch
        >>> from diffusers_dito import laplacian_l2_loss

        >>> x = torch.zeros(2, 3, 32, 32)
        >>> laplacian_l2_loss(x, x).tolist()
        [0.0, 0.0]
        >>> laplacian_l2_loss(x + 0.1 * torch.randn(2, 3, 32, 32), x).shape
        torch.Size([2])

        ```
    """
    _check_same_shape(sample, target)
    if num_levels < 1 or min(sample.shape[-2:]) < 3 * 2 ** (num_levels - 1):
        raise ValueError(
            f"`num_levels` must be >= 1 and leave every level at least 3 px: {num_levels} levels of a "
            f"{tuple(sample.shape[-2:])} image."
        )
    if not 0.0 < fine_weight < float("inf"):
        raise ValueError(f"`fine_weight` must be a finite number > 0, got {fine_weight}.")
    weights = [fine_weight if num_levels > 1 else 1.0] + [1.0] * (num_levels - 1)
    bands = zip(laplacian_pyramid(sample.float(), num_levels), laplacian_pyramid(target.float(), num_levels))
    per_band = [(s - t).pow(2).mean(dim=(1, 2, 3)) for s, t in bands]  # num_levels × (B,)
    return sum(w * band for w, band in zip(weights, per_band)) * (num_levels / sum(weights))  # (B,)


def _patch_sliced_distance(
    band: torch.Tensor, target_band: torch.Tensor, patch_size: int, num_directions: int, generator
) -> torch.Tensor:
    """The squared sliced Wasserstein-2 distance of one level of [`patch_sliced_wasserstein_loss`], a scalar."""
    dim = band.shape[1] * patch_size**2
    directions = random_unit_directions(dim, num_directions, generator, band)  # (D, K)
    # (B, D, L) -> (B·L, D): every neighbourhood of every image, then its projections sorted per direction
    projected = [
        (F.unfold(x, patch_size).transpose(1, 2).reshape(-1, dim) @ directions).sort(dim=0).values
        for x in (band, target_band)
    ]  # 2 × (B·L, K)
    return (projected[0] - projected[1]).pow(2).mean()


def patch_sliced_wasserstein_loss(
    sample: torch.Tensor,
    target: torch.Tensor,
    num_levels: int = 3,
    patch_size: int = 7,
    num_directions: int = 64,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""
    Distribution matching of local detail: the sliced Wasserstein-2 distance between the sets of `patch_size`²
    neighbourhoods of `sample` and of `target` (every position of every image in the batch), per band-pass level of
    their Laplacian pyramid, averaged over the levels.

    Written for decoder distillation (`training/distill_dito.py --swd_loss_weight`): a 1-step student cannot
    reproduce the exact grain its teacher draws from each noise, and a paired L2 then pays it to average that grain
    away. This term compares the two batches' patches as sets, whatever their order, so it asks for detail of the
    teacher's kind without asking where each grain lies. It is the sliced Wasserstein texture loss of Heitz et al.
    (CVPR 2021) on the pyramid of the SWD metric (Karras et al. 2018), computed on the teacher's decodes rather than
    on real images; written here because no library in our stack has a differentiable patch SWD.

    Unlike the metric, the patches are not normalised (their energy counts), all positions are used, and the
    distance is squared. Each call draws `num_directions` random unit directions from `generator`.

    Args:
        sample (`torch.Tensor` of shape `(B, C, H, W)`): The prediction.
        target (`torch.Tensor` of the same shape): The batch whose patch distribution it should match.
        num_levels (`int`, *optional*, defaults to 3): Pyramid levels; the `num_levels − 1` band-pass levels are
            compared (the low-pass residual is left to the paired loss).
        patch_size (`int`, *optional*, defaults to 7): Side of the neighbourhoods; every compared level must be at
            least this size.
        num_directions (`int`, *optional*, defaults to 64): Random projections per level.
        generator (`torch.Generator`, *optional*): CPU generator of the directions, for reproducible steps.

    Returns:
        `torch.Tensor`, scalar: the batch's loss.

    Examples:
        ```py
        >>> import torch
        >>> from diffusers_dito import patch_sliced_wasserstein_loss

        >>> x = torch.randn(4, 3, 32, 32)
        >>> float(patch_sliced_wasserstein_loss(x, x.flip(0)))  # the same images in another order
        0.0
        >>> float(patch_sliced_wasserstein_loss(x, 0.5 * x)) > 0
        True

        ```
    """
    _check_same_shape(sample, target)
    if num_levels < 2 or min(sample.shape[-2:]) < patch_size * 2 ** (num_levels - 2):
        raise ValueError(
            f"`num_levels` must be >= 2 and leave every band-pass level at least `patch_size` ({patch_size}) px: "
            f"{num_levels} levels of a {tuple(sample.shape[-2:])} image."
        )
    if num_directions < 1:
        raise ValueError(f"`num_directions` must be >= 1, got {num_directions}.")
    bands = zip(laplacian_pyramid(sample.float(), num_levels)[:-1], laplacian_pyramid(target.float(), num_levels)[:-1])
    per_level = [_patch_sliced_distance(*pair, patch_size, num_directions, generator) for pair in bands]
    return torch.stack(per_level).mean()
