"""Processes and model wrapping: one process, or one per GPU under torchrun, and the transforms a step's
model gets from outside it (DistributedDataParallel, then torch.compile), and sharded data parallelism
(FSDP2's fully_shard per block and on the root, optional activation checkpointing per block)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from smollm.kernels import register_inductor_fallbacks
from smollm.model import SmolLM
from smollm.train_config import ConfigError, RunConfig


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
    if env_int("WORLD_SIZE", 1) <= 1:
        return Dist()
    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and device_pref != "cpu"
        dist.init_process_group("nccl" if use_nccl else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), env_int("LOCAL_RANK", 0))


def env_int(name: str, default: int) -> int:
    """The whole number in the environment variable name (torchrun's), else default; ConfigError naming it."""
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"{name}={text!r} in the environment: must be a whole number >= 0 (torchrun sets it; "
                          f"unset it for one process)")
    return value


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


def shard(model: SmolLM, param_dtype: torch.dtype | None = None, checkpoint_activations: bool = False) -> SmolLM:
    """FSDP2 in place, as torchtitan applies it: activation checkpointing per block (when asked), then
    fully_shard on each block and on the root (the tied embedding and head, the final norm). Parameters
    are gathered in param_dtype for compute (None: as stored); gradients are reduced and the master
    weights kept in fp32. The module tree and the parameter names stay the model's own."""
    from torch.distributed._composable import checkpoint
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.model.layers:
        if checkpoint_activations:
            checkpoint(block)  # recompute the block's activations in backward
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model
