"""One optimizer step: forward and backward over the step's micro-batches (the loss weighted by valid
targets, whatever the split), gradient clipping, the non-finite guard, AdamW. No host sync."""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from smollm.checkpoint import latest_checkpoint

IGNORE_INDEX = -100


class NonFiniteLoss(RuntimeError):
    pass


def forward_backward(model, micro: list[tuple[torch.Tensor, ...]], ddp=None, world: int = 1,
                     amp=contextlib.nullcontext) -> torch.Tensor:
    """Accumulate the gradient of the step's loss: the mean over every valid target of the step (all
    micro-batches, all ranks), whatever the split. Each micro-batch's mean is weighted by its share
    of the valid targets; DDP averages over ranks, hence the factor world. Returns this rank's share
    of the step's loss (the step's loss itself when world == 1)."""
    counts = torch.stack([(m[1] != IGNORE_INDEX).sum() for m in micro]).float()  # (M,)
    total = counts.sum()
    if world > 1:
        dist.all_reduce(total)
    weights = counts * world / total
    loss_sum = torch.zeros((), device=counts.device)
    for i, (x, y, *docs) in enumerate(micro):  # docs: the document ids of aligned windows, or none
        sync = ddp.no_sync() if ddp is not None and i < len(micro) - 1 else contextlib.nullcontext()
        with sync:
            with amp():
                loss = model(x, y, *[d for d in docs if d is not None]) * weights[i]
            loss.backward()
        loss_sum += loss.detach().float()
    return loss_sum / world


class NonFiniteGuard:
    """Catches a non-finite loss or gradient norm without a host sync: the flag lives on the device,
    the fused optimizer skips its update while it is set (AdamW's found_inf, as GradScaler uses it),
    so no non-finite step ever changes the weights, and the host reads the flag only at the steps
    that sync anyway (log, eval, checkpoint, stop)."""

    def __init__(self, device: torch.device, run_dir: str):
        self.run_dir = run_dir
        self.first_bad = torch.zeros((), dtype=torch.int64, device=device)  # step of the first bad one, 0: none
        self.loss = torch.zeros((), device=device)
        self.gnorm = torch.zeros((), device=device)

    def update(self, step: int, loss: torch.Tensor, gnorm: torch.Tensor) -> torch.Tensor:
        """Record step's loss and gradient norm; returns found_inf (1.0 once any step was bad)."""
        new = ~(torch.isfinite(loss) & torch.isfinite(gnorm)) & (self.first_bad == 0)
        self.first_bad = torch.where(new, step, self.first_bad)
        self.loss = torch.where(new, loss.float(), self.loss)
        self.gnorm = torch.where(new, gnorm.float(), self.gnorm)
        return (self.first_bad > 0).float()

    def check(self) -> None:
        step = int(self.first_bad)  # the host sync
        if step:
            raise NonFiniteLoss(
                f"non-finite loss ({self.loss.item()}) or gradient norm ({self.gnorm.item()}) at step {step}; the "
                f"weights were not updated from then on. Last good checkpoint: {latest_checkpoint(self.run_dir) or 'none yet'}. "
                f"Try a lower optim.lr, then --resume from it.")


def optimizer_step(fwd, model, opt, micro, guard: NonFiniteGuard, step: int, grad_clip: float, ddp=None,
                   world: int = 1, amp=contextlib.nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    """Step `step` (1-based): forward/backward over the micro-batches, clipping, AdamW. No host sync
    (tests/test_train.py counts them): returns the loss and the gradient norm as device tensors."""
    loss = forward_backward(fwd, micro, ddp, world, amp)
    params = [p for p in model.parameters() if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in params])  # clip_grad_norm_'s two halves
    if grad_clip > 0:
        torch.nn.utils.clip_grads_with_norm_(params, grad_clip, total)
    gnorm = total.full_tensor() if hasattr(total, "full_tensor") else total  # a DTensor when sharded (FSDP)
    if world > 1:
        dist.all_reduce(loss)
    found_inf = guard.update(step, loss, gnorm)
    if opt.defaults.get("fused"):
        opt.found_inf = found_inf
    else:  # unfused AdamW cannot skip on the device: read the flag now (a sync per step)
        guard.check()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss, gnorm
