"""Processes and model wrapping: one process, or one per GPU under torchrun, and the transforms a step's
model gets from outside it (DistributedDataParallel, then torch.compile). Sharded data parallelism
(FSDP2) goes here, beside DDP."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from smollm.kernels import register_inductor_fallbacks
from smollm.model import SmolLM
from smollm.train_config import RunConfig


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str) -> Dist:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them this is a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and device_pref != "cpu"
        dist.init_process_group("nccl" if use_nccl else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def parallelize(model: SmolLM, cfg: RunConfig, d: Dist, device: torch.device):
    """(what a step calls, the DDP wrapper or None): DDP over several processes, then torch.compile."""
    ddp, fwd = None, model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = fwd = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.model.compile:
        register_inductor_fallbacks()  # torch < 2.13: else a deep triton-path model never compiles
        fwd = torch.compile(fwd)
    return fwd, ddp
