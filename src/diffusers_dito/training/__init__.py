# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""The training machinery that the scripts in `training/` share, as `diffusers.training_utils` is for diffusers'
examples: the scripts stay entry points (`accelerate launch training/train_dito.py ...`) and import this library.

One module per concept:

- `arguments`: the flags every training script has, and their start-up checks (one-line usage errors).
- `accelerator`: the `Accelerator` of a run, its trackers and banner, the step statistics, validation grids.
- `data`: image datasets, decoding (unreadable files are skipped and counted), augmentation, samplers, data loaders.
- `latent_cache`: latents encoded once to disk for the latent DiT.
- `checkpoints`: checkpoints that hold `save_pretrained` folders, written atomically, and exact resume from them.
- `trained_weights`: what a run trains: EMA, LoRA adapters, the casting of frozen weights.
- `objectives`: the training objectives as modules (the loss math itself is `diffusers_dito.losses`).
- `loop`: the optimizer and its schedule, the batches from where a run stands, and `TrainingRun`, which does what
  every script does around its own step (EMA, logs, the run's checks, checkpoints, the end of the run).
- `reliability`: SIGTERM, non-finite streaks, unreadable data, the output-folder lock, one-line run errors.
- `performance`: the speed flags (`--torch_compile`, `--channels_last`, ...) mapped onto torch and accelerate.
- `evaluation`, `decode_sweep`: what the evaluation scripts share (image folders, grids, metrics.json, the
  quality-against-NFE sweep).
- `testing`: the tests' instrumentation of a run (hidden flags), never used by a real run.

Nothing is imported here: `import diffusers_dito` does not pay for the training stack.
"""
