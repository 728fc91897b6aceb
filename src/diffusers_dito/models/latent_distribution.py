"""A point-mass "distribution" so that DiTo latents look like `AutoencoderKL` posteriors to stock pipelines."""

import torch


class DiToLatentDistribution:
    r"""
    The deterministic latent of [`AutoencoderDiTo`], wrapped in the interface of diffusers'
    `DiagonalGaussianDistribution`.

    DiTo's encoder is deterministic (there is no KL term), so `sample()` and `mode()` both return the same tensor.
    The wrapper exists only because stock diffusers pipelines call `vae.encode(x).latent_dist.sample(generator)`
    (see `retrieve_latents` in the img2img pipelines).

    Args:
        latents (`torch.Tensor` of shape `(batch_size, latent_channels, height // f, width // f)`):
            The layer-normalised latent tokens.

    Examples:
        ```py
        >>> import torch
        >>> from diffusers_dito.models.latent_distribution import DiToLatentDistribution

        >>> dist = DiToLatentDistribution(torch.zeros(1, 4, 2, 2))
        >>> torch.equal(dist.sample(generator=torch.Generator().manual_seed(0)), dist.mode())
        True

        ```
    """

    def __init__(self, latents: torch.Tensor):
        self.latents = latents

    @property
    def mean(self) -> torch.Tensor:
        return self.latents

    @property
    def std(self) -> torch.Tensor:
        return torch.zeros_like(self.latents)

    @property
    def var(self) -> torch.Tensor:
        return torch.zeros_like(self.latents)

    def sample(self, generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        # `generator` is accepted (and ignored) because stock pipelines always pass it.
        return self.latents

    def mode(self) -> torch.Tensor:
        return self.latents

    def kl(self, other: "DiToLatentDistribution | None" = None) -> torch.Tensor:
        # DiTo has no KL term; report zero so code that logs it keeps working.
        return torch.zeros(self.latents.shape[0], device=self.latents.device, dtype=self.latents.dtype)
