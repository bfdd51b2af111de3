"""The optimizer and its schedule: AdamW over every parameter (optim.kind adamw), or Muon over the
blocks' matrices and AdamW over the rest (optim.kind muon, smollm.training.muon); the LR schedule of
smollm.schedule; and the settings a resumed run applies over restored ones."""

from __future__ import annotations

import torch

from smollm.schedule import lr_factor
from smollm.train_config import RunConfig
from smollm.training.muon import MuonAdamW


def param_groups(model: torch.nn.Module, cfg: RunConfig) -> list[dict]:
    """AdamW: the matrices, decayed (the tied embedding included), then the norm weights, not
    decayed. Muon: first the blocks' matrices, each with its parts (q, k, v; gate, up), which
    Muon orthogonalizes one by one; then the embedding and the norms on AdamW, as above."""
    o = cfg.optim
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    if o.kind == "adamw":
        decay = [p for p in model.parameters() if p.dim() >= 2]
        return [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    c = model.config
    q, kv, f = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim, c.intermediate_size
    parts = {"qkv_proj": [q, kv, kv], "gate_up_proj": [f, f]}
    matrices, splits = [], []
    for name, p in model.model.layers.named_parameters():
        if p.dim() == 2:
            matrices.append(p)
            splits.append(parts.get(name.split(".")[-2], [p.shape[0]]))
    embedding = [model.model.embed_tokens.weight]  # tied: the head too
    return [{"params": matrices, "muon": True, "splits": splits, "lr": o.muon_lr, "weight_decay": o.weight_decay},
            {"params": embedding, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    o = cfg.optim
    # Fused AdamW (CPU and CUDA) by default: besides being faster, it can skip a step on the device
    # (found_inf), which lets NonFiniteGuard work without a host sync.
    fused = o.fused != "false"
    groups = param_groups(model, cfg)
    if o.kind == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=fused)
    return MuonAdamW(groups, lr=o.lr, momentum=o.muon_momentum, betas=o.betas, eps=o.eps, fused=fused)


def base_lr(group: dict, cfg: RunConfig) -> float:
    """The peak LR of a group: optim.muon_lr for Muon's, optim.lr for AdamW's."""
    return cfg.optim.muon_lr if group.get("muon") else cfg.optim.lr


def make_scheduler(opt: torch.optim.Optimizer, cfg: RunConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The LR of every step: each group's peak LR times the schedule's factor (smollm.schedule.lr_factor)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.train.max_steps, cfg.schedule))


def apply_mid_run_settings(opt, sched, cfg: RunConfig) -> None:
    """cfg's optimizer settings and schedule over a restored optimizer and scheduler: the peak LRs,
    betas, eps, momentum and weight decay of each group, and the LR of the next step on cfg's schedule."""
    o = cfg.optim
    for group in opt.param_groups:
        group["initial_lr"] = base_lr(group, cfg)
        if group.get("muon"):
            group["momentum"] = o.muon_momentum
        else:
            group["betas"] = tuple(o.betas)
            group["eps"] = o.eps
        if group is not opt.param_groups[-1]:  # the norm weights (the last group) never decay
            group["weight_decay"] = o.weight_decay
    sched.base_lrs = [group["initial_lr"] for group in opt.param_groups]
    lrs = [base * lmbda(sched.last_epoch) for base, lmbda in zip(sched.base_lrs, sched.lr_lambdas)]
    for group, lr in zip(opt.param_groups, lrs):
        group["lr"] = lr
    sched._last_lr = lrs
