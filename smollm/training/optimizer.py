"""The optimizer and its schedule: AdamW over the model's parameter groups, the LR schedule of
smollm.schedule, and the settings a resumed run applies over restored ones. Another optimizer (Muon)
goes here."""

from __future__ import annotations

import torch

from smollm.schedule import lr_factor
from smollm.train_config import RunConfig


def make_optimizer(model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (the tied embedding included) and none on norm weights."""
    o = cfg.optim
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    # Fused AdamW (CPU and CUDA) by default: besides being faster, it can skip a step on the device
    # (found_inf), which lets NonFiniteGuard work without a host sync.
    fused = o.fused != "false"
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=fused)


def make_scheduler(opt: torch.optim.Optimizer, cfg: RunConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The LR of every step: optim.lr times the schedule's factor (smollm.schedule.lr_factor)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.train.max_steps, cfg.schedule))


def apply_mid_run_settings(opt, sched, cfg: RunConfig) -> None:
    """cfg's optimizer settings and schedule over a restored optimizer and scheduler: the peak LR,
    betas, eps and weight decay of each group, and the LR of the next step on cfg's schedule."""
    o = cfg.optim
    for i, group in enumerate(opt.param_groups):
        group["initial_lr"] = o.lr
        group["betas"] = tuple(o.betas)
        group["eps"] = o.eps
        if i == 0:  # the decayed matrices; norm weights (group 1) never decay
            group["weight_decay"] = o.weight_decay
    sched.base_lrs = [o.lr] * len(opt.param_groups)
    lrs = [base * lmbda(sched.last_epoch) for base, lmbda in zip(sched.base_lrs, sched.lr_lambdas)]
    for group, lr in zip(opt.param_groups, lrs):
        group["lr"] = lr
    sched._last_lr = lrs
