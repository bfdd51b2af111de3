"""What a run measures besides its training loss: the validation loss, over the same windows at every
evaluation. Downstream benchmarks at checkpoints go here."""

from __future__ import annotations

import torch

from smollm.data import TokenWindows
from smollm.train_config import RunConfig
from smollm.training.device import autocast, out_of_memory_is_config_error
from smollm.training.step import IGNORE_INDEX

EVAL_SEED = 1_000_003  # the validation windows: the same every evaluation, whatever the run's seed


@torch.no_grad()
def validation_loss(model, windows: TokenWindows, cfg: RunConfig, device: torch.device) -> float:
    """Mean loss over the same eval_batches x micro_batch validation windows every time."""
    batch = min(cfg.train.micro_batch, windows.n_windows)
    total, count = 0.0, 0
    for i in range(cfg.log.eval_batches):
        with out_of_memory_is_config_error(cfg, device):
            b = windows.get_batch(EVAL_SEED, i, batch)
            x, y = b.x.to(device), b.y.to(device)  # (batch, T)
            with autocast(device, cfg):
                loss = model(x, y)
        n = int((y != IGNORE_INDEX).sum())
        total += float(loss) * n
        count += n
    return total / count
