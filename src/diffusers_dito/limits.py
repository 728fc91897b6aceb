"""Bounds on what a user may ask for, shared by the `diffusers-dito` command line and its web app."""

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes an unsigned 64-bit seed
APP_MAX_MEGAPIXELS = 1.0  # the web app refuses larger uploads (once padded): on a CPU, 32 steps at 1 MP take minutes
# Decoded in 256-px tiles, a 1 MP square takes 25 tiles a step; a long strip of the same area takes hundreds, each a
# network evaluation: tiles a step are bounded too, in proportion to the pixel limit.
APP_TILES_PER_MEGAPIXEL = 64
APP_TIME_LIMIT = 300.0  # seconds of work the web app gives one request before it stops it
