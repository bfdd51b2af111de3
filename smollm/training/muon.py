"""Muon for the blocks' matrices, AdamW for the rest, in one optimizer (one state dict, one LR
schedule, one found_inf).

Muon (Keller Jordan, 2024) replaces a matrix's update by its momentum, orthogonalized: five
Newton-Schulz iterations push every singular value of the (Nesterov) momentum towards 1, so each
step moves the matrix by the same amount in every direction it has a gradient for, instead of
mostly along the few directions that dominate the gradient. It is the optimizer of the nanoGPT
speedruns (modded-nanogpt) and of nanochat. Embeddings, the head and norm weights are not matrices
in that sense (a row per token, a vector) and stay on AdamW, as they do there.

Why ours and not torch.optim.Muon: our attention and MLP weights are fused (q, k and v in one
matrix; gate and up in another), and a fused matrix must be orthogonalized part by part, as if q,
k and v were separate (as modded-nanogpt does with its stacked qkv). Also, a non-finite step must be
skipped on the device (found_inf, as the fused AdamW does) so that training needs no host sync per
step. On an unfused matrix each step equals torch.optim.Muon's (tests/test_muon.py): the same
Newton-Schulz coefficients, Nesterov momentum (averaging, as Keller Jordan's), decoupled weight decay and LR scaled by
sqrt(max(1, rows / cols)) per part.

Param groups: those with `muon: True` hold 2-D matrices and `splits` (one list of row counts per
matrix: its parts, e.g. [q, kv, kv]); the others are AdamW groups (betas, eps, weight_decay).
"""

from __future__ import annotations

import math

import torch
from torch.optim.adamw import adamw

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the quintic of Keller Jordan's Muon (and torch.optim.Muon's)


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """g (m, n) -> about U V^T of its SVD (singular values pushed into roughly [0.7, 1.2], which
    trains as well as exact U V^T), by Newton-Schulz iterations in bf16 (they tolerate it)."""
    a, b, c = NS_COEFFICIENTS
    x = g.bfloat16()
    tall = g.size(0) > g.size(1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm = 1: inside the iteration's basin
    for _ in range(steps):
        gram = x @ x.T  # (m, m)
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class MuonAdamW(torch.optim.Optimizer):
    """Muon on the `muon` groups, AdamW (fused where asked) on the others. The fused flag lives in
    defaults, as AdamW's does: the training step then hands it found_inf (smollm.training.step)."""

    def __init__(self, groups: list[dict], lr: float, momentum: float = 0.95, betas=(0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.0, fused: bool = False, ns_steps: int = 5):
        defaults = dict(lr=lr, momentum=momentum, betas=tuple(betas), eps=eps, weight_decay=weight_decay, fused=fused,
                        ns_steps=ns_steps, muon=False, splits=None)
        super().__init__(groups, defaults)
        for group in self.param_groups:
            if group["muon"]:
                splits = group["splits"] or [[p.shape[0]] for p in group["params"]]
                for p, parts in zip(group["params"], splits):
                    if p.dim() != 2 or sum(parts) != p.shape[0]:
                        raise ValueError(f"Muon takes matrices split into row blocks; got a {tuple(p.shape)} "
                                         f"parameter with parts {parts}")
                group["splits"] = splits

    @torch.no_grad()
    def step(self, closure=None):
        assert closure is None, "MuonAdamW takes no closure"
        found_inf = getattr(self, "found_inf", None)  # set by the training step; () float, 1.0: skip this step
        for group in self.param_groups:
            if group["muon"]:
                self._muon(group, found_inf)
            else:
                self._adamw(group, found_inf)

    def _muon(self, group: dict, found_inf: torch.Tensor | None) -> None:
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        for p, parts in zip(group["params"], group["splits"]):
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            g = p.grad
            new_buf = buf.lerp(g, 1 - mu)  # the momentum as an average of the gradients
            update = g.lerp(new_buf, mu)  # Nesterov
            rows = update.split(parts, dim=0)  # each part orthogonalized on its own, LR scaled by its shape
            o = torch.cat([orthogonalize(r, group["ns_steps"]).to(p.dtype) * math.sqrt(max(1.0, r.size(0) / r.size(1)))
                           for r in rows])
            if found_inf is None:
                buf.copy_(new_buf)
                p.mul_(1 - lr * wd).add_(o, alpha=-lr)
            else:  # a skipped step changes neither the weights nor the momentum
                keep = found_inf > 0
                buf.copy_(torch.where(keep, buf, new_buf))
                p.copy_(torch.where(keep, p, p * (1 - lr * wd) - lr * o))

    def _adamw(self, group: dict, found_inf: torch.Tensor | None) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device if group["fused"] else "cpu")
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
        states = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        if found_inf is not None and not group["fused"]:
            raise RuntimeError("a found_inf needs the fused AdamW (optim.fused)")
        adamw(
            params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
            [s["step"] for s in states], fused=group["fused"] or None, found_inf=found_inf, amsgrad=False,
            beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
            maximize=False)
