"""Processes and model wrapping: one process, or one per GPU under torchrun, and the transforms a step's
model gets from outside it (parallel.strategy): DistributedDataParallel then torch.compile, or FSDP2
(fully_shard per block and on the root, each block compiled); activation checkpointing per block."""

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
    """(what a step calls, the DDP wrapper or None), the model changed in place where it must be: with
    parallel.strategy=fsdp over several processes, sharded (shard(), each block compiled on its own,
    as torchtitan does); otherwise DDP over several processes, then torch.compile of the whole.
    parallel.checkpoint_activations applies either way. Build the optimizer after this: FSDP
    replaces the parameters with their shards."""
    param_dtype = torch.bfloat16 if cfg.train.dtype == "bf16" else None
    if cfg.model.compile:
        register_inductor_fallbacks()  # torch < 2.13: else a deep triton-path model never compiles
    if d.world > 1 and cfg.parallel.strategy == "fsdp":
        if cfg.model.compile:
            for block in model.model.layers:
                block.compile()  # in place: FSDP's hooks stay outside the compiled graphs
        return shard(model, param_dtype, cfg.parallel.checkpoint_activations), None
    if cfg.parallel.checkpoint_activations:
        checkpoint_blocks(model)
    ddp, fwd = None, model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = fwd = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.model.compile:
        fwd = torch.compile(fwd)
    return fwd, ddp


def checkpoint_blocks(model: SmolLM) -> None:
    """Each block's activations recomputed in the backward instead of kept (composable: the module
    tree and parameter names stay the model's own)."""
    from torch.distributed._composable import checkpoint

    for block in model.model.layers:
        checkpoint(block)


def shard(model: SmolLM, param_dtype: torch.dtype | None = None, checkpoint_activations: bool = False) -> SmolLM:
    """FSDP2 in place, as torchtitan applies it: activation checkpointing per block (when asked), then
    fully_shard on each block and on the root (the tied embedding and head, the final norm). Parameters
    are gathered in param_dtype for compute (None: as stored); gradients are reduced and the master
    weights kept in fp32. The module tree and the parameter names stay the model's own."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    if checkpoint_activations:
        checkpoint_blocks(model)
    for block in model.model.layers:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def check_shared_dir(path: str, d: Dist) -> None:
    """Every process calls it, under FSDP: each writes its shards of a checkpoint into the run directory,
    so every process must see rank 0's. A ConfigError (on every process) naming the hosts that do not."""
    import socket
    import uuid

    name = from_rank0(f".shared-{uuid.uuid4().hex}" if d.main else None)
    probe = os.path.join(path, name)
    if d.main:
        open(probe, "w").close()
    dist.barrier()
    seen = [None] * d.world
    dist.all_gather_object(seen, (os.path.exists(probe), socket.gethostname()))
    dist.barrier()
    if d.main:
        os.unlink(probe)
    blind = sorted({host for ok, host in seen if not ok})
    if blind:
        raise ConfigError(f"log.out_dir: {path} is not visible from every process ({', '.join(blind)} cannot see "
                          f"it); with parallel.strategy=fsdp each process writes its shards of every checkpoint "
                          f"there, so put log.out_dir on a filesystem every node mounts")


def rank0_before_group(key: str, work):
    """work() on rank 0 alone, before the process group exists (its backend and size come from what work
    finds: a run fetched from a store); every process gets rank 0's JSON-able result, or raises its
    error. The others wait on torchrun's own store (a failed rank 0 ends them: torchrun stops its workers)."""
    import json
    from datetime import timedelta

    if env_int("WORLD_SIZE", 1) <= 1:
        return work()
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        raise ConfigError(f"{key} on several processes needs torchrun (the processes meet at its store first); "
                          f"launch with torchrun, or run it once on one process")
    store = dist.TCPStore(os.environ["MASTER_ADDR"], env_int("MASTER_PORT", 0), is_master=False,
                          timeout=timedelta(hours=6))  # rank 0 may be fetching a large checkpoint meanwhile
    slot = f"smollm/{key}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"  # a restarted launch asks again
    if env_int("RANK", 0) == 0:
        try:
            result = work()
        except Exception as e:  # noqa: BLE001 -- said by rank 0 itself; the others stop with it
            store.set(slot, json.dumps({"error": f"rank 0: {e}"}))
            raise
        store.set(slot, json.dumps({"result": result}))
        return result
    answer = json.loads(store.get(slot))
    if "error" in answer:
        raise ConfigError(answer["error"])
    return answer["result"]


def from_rank0(value):
    """Rank 0's value, on every process (a collective)."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def unsharded_copy(model: SmolLM, device: torch.device) -> SmolLM | None:
    """Every process calls it: the sharded model's full fp32 weights gathered into a plain copy on
    rank 0 (its device), None elsewhere: what evaluation, samples and benchmarks run on (the KV-cache
    decode calls the blocks without the root's forward, which FSDP needs to gather the embedding)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from smollm.model import native_keys

    with native_keys():
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if dist.get_rank() != 0:
            return None
        copy = SmolLM.empty(model.config, model.kernels)
        copy.load_state_dict(full)
    return copy.to(device)
