"""The pieces each training script's step calls (diffusers_dito.training: the loop, StepStatistics, the test hooks)."""

import argparse
import math

import torch
from accelerate import Accelerator
from script_helpers import fresh_accelerate_state  # noqa: F401 (autouse fixture)

from diffusers_dito.training.accelerator import NUM_T_BUCKETS, StepStatistics
from diffusers_dito.training.loop import masked_mean, optimizer_step
from diffusers_dito.training.testing import DebugRecorder, install_test_hooks


def batch(valid: list[bool], too_small: list[bool]) -> dict:
    return {"valid": torch.tensor(valid), "too_small": torch.tensor(too_small)}


def test_step_statistics_sum_micro_batches_into_named_fields():
    accelerator = Accelerator(cpu=True)
    stats = StepStatistics(accelerator.device, flag_names=["noise_synced"])
    # Micro-batch 1: two usable samples (t in the first and last quarter), one unreadable, one too small.
    stats.add(
        torch.tensor([1.0, 3.0, 100.0, 100.0]),
        torch.tensor([0.1, 0.9, 0.5, 0.5]),
        batch([True, True, False, False], [False, False, False, True]),
        noise_synced=torch.tensor([True, False, True, True]),
    )
    stats.add(torch.tensor([2.0]), torch.tensor([1.0]), batch([True], [False]), noise_synced=torch.tensor([True]))
    totals = stats.reduce(accelerator)

    assert (totals.samples, totals.unreadable, totals.too_small) == (3, 1, 1)
    assert totals.loss_sum == 6.0 and totals.mean_loss == 2.0  # the unusable samples' losses weigh nothing
    assert totals.flag_counts == {"noise_synced": 2.0}  # only usable samples count
    assert totals.bucket_samples == [1.0, 0.0, 0.0, 2.0] and totals.bucket_loss_sums == [1.0, 0.0, 0.0, 5.0]
    logs = stats.logs(totals, {"noise_synced": "noise_sync_fraction"})
    assert logs["noise_sync_fraction"] == 2 / 3 and logs["images"] == 3
    assert logs[f"loss_t/{3 / NUM_T_BUCKETS:.2f}-1.00"] == 2.5 and "loss_t/0.25-0.50" not in logs
    stats.reset()
    assert stats.reduce(accelerator).samples == 0


def test_masked_mean_ignores_unusable_samples_and_an_empty_batch_is_zero():
    assert masked_mean(torch.tensor([1.0, 3.0, float("nan")]), torch.tensor([True, True, False])).item() == 2.0
    assert masked_mean(torch.tensor([5.0]), torch.tensor([False])).item() == 0.0


def test_optimizer_step_skips_a_non_finite_step_but_advances_the_schedule():
    accelerator = Accelerator(cpu=True)
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.5)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)
    stats = StepStatistics(accelerator.device, flag_names=[])

    weight.grad = torch.ones(2)
    stats.add(torch.tensor([float("nan")]), torch.tensor([0.5]), batch([True], [False]))
    assert optimizer_step(accelerator, optimizer, lr_scheduler, stats.reduce(accelerator), torch.tensor(1.0))
    assert torch.equal(weight.detach(), torch.ones(2)) and weight.grad is None
    assert math.isclose(lr_scheduler.get_last_lr()[0], 0.25)

    weight.grad = torch.ones(2)
    stats.reset()
    stats.add(torch.tensor([1.0]), torch.tensor([0.5]), batch([True], [False]))
    assert not optimizer_step(accelerator, optimizer, lr_scheduler, stats.reduce(accelerator), torch.tensor(1.0))
    assert torch.allclose(weight.detach(), torch.full((2,), 0.75))
    weight.grad = torch.ones(2)
    assert optimizer_step(accelerator, optimizer, lr_scheduler, stats.reduce(accelerator), torch.tensor(math.inf))


def test_debug_hooks_attach_only_with_the_hidden_flags(tmp_path):
    accelerator = Accelerator(cpu=True)
    loader = torch.utils.data.DataLoader(list(range(4)), batch_size=2)
    collate = loader.collate_fn
    args = argparse.Namespace(debug_dump_dir=None, debug_pause_at=None, output_dir=str(tmp_path))
    assert install_test_hooks(args, accelerator, loader) is None
    assert loader.collate_fn is collate and accelerator.log_with == []

    args.debug_dump_dir = str(tmp_path / "dump")
    recorder = install_test_hooks(args, accelerator, loader)
    assert isinstance(recorder, DebugRecorder) and accelerator.log_with == [recorder]
    recorder.log({"loss": 1.0, "images": 4, "noise_sync_fraction": 0.5}, step=1)
    recorder.log({"loss": 1.0, "images": 2, "noise_sync_fraction": 1.0}, step=2)
    recorder.log({"validation/psnr": 20.0}, step=2)  # not a step's log
    assert len(recorder.rss_bytes) == 2 and recorder.flag_sums["noise_sync_fraction"] / recorder.images == 4 / 6
