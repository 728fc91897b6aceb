# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""DiTo's timestep grid for diffusers' flow-match schedulers: one helper, as diffusers keeps `retrieve_timesteps`."""

import inspect

import numpy as np
import torch
from diffusers.schedulers import SchedulerMixin


def retrieve_flow_match_timesteps(
    scheduler: SchedulerMixin,
    num_inference_steps: int,
    device: torch.device | str | None = None,
    sigmas: list[float] | None = None,
) -> torch.Tensor:
    r"""
    Put `scheduler` on DiTo's sampling grid and return its timesteps (σ·1000), as diffusers' `retrieve_timesteps` does
    for its pipelines. Every DiTo sampling loop (the decoder's, the latent DiT's) gets its grid here.

    The paper integrates the ODE with Euler steps on the uniform grid t = 1, 1 - 1/N, ..., 1/N, 0. diffusers'
    default flow-match grid ends at σ_min = 1/num_train_timesteps instead of 1/N, so schedulers that accept
    explicit `sigmas` get the uniform grid, or the user's `sigmas` (descending, without the final 0). Any `shift`
    configured on the scheduler still applies. `FlowMatchHeunDiscreteScheduler`, which has no such argument, gets
    the same uniform grid through its `sigma_min`; a user grid for it raises a `ValueError`.

    Examples:
        ```py
        >>> from diffusers import FlowMatchEulerDiscreteScheduler
        >>> from diffusers_dito.scheduling import retrieve_flow_match_timesteps

        >>> retrieve_flow_match_timesteps(FlowMatchEulerDiscreteScheduler(), 4).tolist()
        [1000.0, 750.0, 500.0, 250.0]

        ```
    """
    accepts_sigmas = "sigmas" in inspect.signature(scheduler.set_timesteps).parameters
    if sigmas is not None:
        sigmas = [float(s) for s in sigmas]
        if not accepts_sigmas:
            raise ValueError(f"{type(scheduler).__name__} does not accept a custom `sigmas` grid.")
        if len(sigmas) != num_inference_steps or any(not 0 < s <= 1 for s in sigmas):
            raise ValueError(f"`sigmas` must be {num_inference_steps} values in (0, 1], got {sigmas}.")
        if any(a <= b for a, b in zip(sigmas, sigmas[1:])):
            raise ValueError(f"`sigmas` must be strictly decreasing, got {sigmas}.")
    if accepts_sigmas:
        if sigmas is None:
            sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1]  # the scheduler appends the final 0
        scheduler.set_timesteps(sigmas=sigmas, device=device)
    elif hasattr(scheduler, "sigma_min"):
        # e.g. FlowMatchHeunDiscreteScheduler spaces N points from 1 to its sigma_min (1/1000): with few steps the
        # last step then covers almost nothing. Spacing them down to 1/N gives the same uniform grid as Euler.
        sigma_min = scheduler.sigma_min
        scheduler.sigma_min = 1.0 / num_inference_steps
        try:
            scheduler.set_timesteps(num_inference_steps, device=device)
        finally:
            scheduler.sigma_min = sigma_min
    else:
        scheduler.set_timesteps(num_inference_steps, device=device)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)  # known start: no per-call timestep lookup (a host-device sync on GPU)
    return scheduler.timesteps
