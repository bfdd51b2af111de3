"""Learning-rate schedules: linear warmup, then cosine decay or WSD (warmup-stable-decay)."""

from __future__ import annotations

import math

from smollm.train_config import ScheduleSection


def lr_factor(step: int, max_steps: int, s: ScheduleSection) -> float:
    """Multiplier of the peak LR for the optimizer step with index `step` (0-based)."""
    if s.warmup_steps and step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    floor = s.min_lr_ratio
    if s.kind == "cosine":
        span = max(1, max_steps - s.warmup_steps - 1)
        progress = min(1.0, (step - s.warmup_steps) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    # WSD: the peak until the last decay_fraction of the steps, then down to the floor. A run can be
    # extended or branched from any checkpoint of the stable phase, which a cosine run cannot.
    decay_steps = int(round(s.decay_fraction * max_steps))
    decay_start = max_steps - decay_steps
    if decay_steps == 0 or step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start + 1) / decay_steps)
    if s.decay_shape == "linear":
        down = progress
    elif s.decay_shape == "cosine":
        down = 0.5 * (1 - math.cos(math.pi * progress))
    else:  # 1-sqrt: the cooldown Hägele et al. (2024) found best for WSD
        down = math.sqrt(progress)
    return floor + (1 - floor) * (1 - down)
