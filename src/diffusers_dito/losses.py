"""DiTo's training objective: one flow-matching L2 loss, with optional noise synchronisation."""

from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

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
    """

    loss: torch.Tensor
    per_sample_loss: torch.Tensor
    t: torch.Tensor
    tau: torch.Tensor
    noise_synced: torch.Tensor


def dito_flow_matching_loss(
    vae: AutoencoderDiTo,
    images: torch.Tensor,
    noise_sync_prob: float = 0.0,
    generator: torch.Generator | None = None,
) -> DiToLossOutput:
    r"""
    The DiTo objective (paper Sec. 3), trained jointly through encoder and decoder:

    1. z = LN(E(x)).
    2. Noise synchronisation, with probability `noise_sync_prob` per sample: τ ~ U[0, 1], z ← (1 − τ)·z + τ·ε_z,
       and the decoder's time is drawn from U[τ, 1], so the decoder is never asked to be cleaner than its latent.
       Otherwise τ = 0 and t ~ U[0, 1].
    3. x_t = (1 − t)·x + t·ε.
    4. L = ‖D(x_t, t, z) − (ε − x)‖², averaged per sample, then over the batch.

    The target ε − x is the velocity that diffusers' flow-match schedulers step with (x_{t'} = x_t + (t' − t)·v),
    so a stock `FlowMatchEulerDiscreteScheduler` decodes the trained model.

    Args:
        vae (`AutoencoderDiTo`): The model to train.
        images (`torch.Tensor` of shape `(B, 3, H, W)`): Training images in [-1, 1].
        noise_sync_prob (`float`, *optional*, defaults to 0.0): Probability p of noise synchronisation (paper: 0.1).
        generator (`torch.Generator`, *optional*): Source of all randomness here, for reproducible steps.

    Returns:
        [`DiToLossOutput`].

    Examples:
        ```py
        >>> import torch
        >>> from diffusers_dito import AutoencoderDiTo, DITO_PRESETS, dito_flow_matching_loss

        >>> vae = AutoencoderDiTo.from_config(DITO_PRESETS["dito-tiny"])
        >>> out = dito_flow_matching_loss(vae, torch.rand(2, 3, 32, 32) * 2 - 1, noise_sync_prob=0.1)
        >>> out.per_sample_loss.shape
        torch.Size([2])

        ```
    """
    if not 0.0 <= noise_sync_prob <= 1.0:
        raise ValueError(f"`noise_sync_prob` must be in [0, 1], got {noise_sync_prob}.")
    batch_size, device = images.shape[0], images.device

    z = vae.encode(images).latents  # (B, C, h, w)
    uniform = torch.rand(3, batch_size, generator=generator, device=generator.device if generator else device)
    uniform = uniform.to(device=device, dtype=torch.float32)  # (3, B): sync coin, τ, t
    noise_synced = uniform[0] < noise_sync_prob  # (B,)
    tau = torch.where(noise_synced, uniform[1], torch.zeros_like(uniform[1]))  # (B,)
    t = tau + (1.0 - tau) * uniform[2]  # (B,): U[τ, 1], i.e. U[0, 1] where τ = 0

    latent_noise = randn_tensor(z.shape, generator=generator, device=device, dtype=z.dtype)
    tau_b = tau.view(-1, 1, 1, 1).to(z.dtype)
    z = (1.0 - tau_b) * z + tau_b * latent_noise  # (B, C, h, w)

    noise = randn_tensor(images.shape, generator=generator, device=device, dtype=images.dtype)
    t_b = t.view(-1, 1, 1, 1).to(images.dtype)
    noisy = (1.0 - t_b) * images + t_b * noise  # (B, 3, H, W)
    target = noise - images

    pred = vae.predict_velocity(noisy, t * 1000.0, vae.upsample_latents(z))  # timestep as σ·1000
    per_sample_loss = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))  # (B,)
    return DiToLossOutput(
        loss=per_sample_loss.mean(), per_sample_loss=per_sample_loss, t=t, tau=tau, noise_synced=noise_synced
    )
