"""Bounds on what a user may ask for, shared by the `diffusers-dito` command line and its web app."""

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes an unsigned 64-bit seed
APP_MAX_MEGAPIXELS = 1.0  # the web app refuses larger uploads: on a CPU, 32 steps at 1 MP already take minutes
