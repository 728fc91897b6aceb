# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""Training scripts (one per stage) and the code they share.

Stages, each a `parse_args()` / `main(args)` script:

- `train_dito.py`: the DiTo autoencoder (or LoRA adapters on its decoder).
- `train_latent_dit.py`: a class-conditional DiT on the latents of a trained, frozen DiTo.

Shared modules: `arguments` (flags and start-up checks), `data` (image datasets, decoding, augmentation, samplers),
`latent_cache` (latents encoded once to disk), `checkpointing` (save/load hooks, checkpoint limit, resume, EMA and
LoRA state, atomic saves), `steps` (what each script's step calls: optimizer, epochs' batches with exact resume, the
optimizer step, logs, the end of the run), `reliability` (SIGTERM, non-finite streaks, the bad-data check;
docs/reliability.md), `logging_utils` (accelerator set-up, step statistics, validation grids) and `debug` (the tests'
hidden hooks, attached from outside the step). Each script's `main` shows its training step top to bottom. The
losses themselves live in the package: `diffusers_dito.losses`.

Evaluation scripts, laid out the same way (docs/evaluation.md): `evaluate_dito.py` (a DiTo's reconstructions, and
their quality against NFE) and `evaluate_generation.py` (samples of a `DiToDiTPipeline`). They share `evaluation`
(image folders, grids, metrics.json, the `--num_processes` re-launch); `decode_sweep` holds `evaluate_dito.py`'s
quality-against-NFE sweep. Both load models with `diffusers_dito.pipelines.loading`, as the `diffusers-dito` command
line does.

The scripts are run as files (`python training/train_dito.py`, `accelerate launch training/train_dito.py`), which puts
`training/` itself, not the repository root, on `sys.path`. Each script therefore adds the repository root to
`sys.path` before importing `training.<module>`, so the shared code is imported the same way when run as a file, as
`python -m training.train_dito`, or from the tests.
"""
