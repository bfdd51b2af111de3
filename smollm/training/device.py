"""Where a step runs, in what precision, and whether it fits: the device of this process, the dtype of
the forward (autocast), and the memory checks that turn a batch too big into one line naming it."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass

import torch

from smollm.train_config import ConfigError, RunConfig
from smollm.training.parallel import Dist


def pick_device(pref: str, d: Dist) -> torch.device:
    if pref == "auto":
        pref = f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(pref)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: {pref!r} asked for, but no CUDA GPU is available")
        torch.cuda.set_device(device)
    return device


def ran_dtype(cfg: RunConfig, device: torch.device) -> str:
    """The dtype the forward runs in on `device`: train.dtype on a GPU; on a CPU fp32, unless
    train.cpu_autocast. setup() records it as the run's train.dtype (config.yaml says what ran)."""
    if device.type == "cuda":
        return cfg.train.dtype
    return "bf16" if device.type == "cpu" and cfg.train.cpu_autocast else "fp32"


def autocast(device: torch.device, cfg: RunConfig):
    if ran_dtype(cfg, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class MemoryEstimate:
    """A step's peak memory on one process, in bytes, by what holds it (memory_estimate)."""

    weights: int  # the fp32 master weights (this process's shard under FSDP)
    gradients: int  # fp32, as many as the weights
    optimizer: int  # AdamW's two moments; Muon's momentum on its matrices
    activations: int  # what the forward saves for the backward, one micro-batch
    loss: int  # the cross-entropy's logits and their gradients (torch path), or one chunk of them (triton)
    gathered: int = 0  # FSDP: the unsharded weights and gradients in flight (the root's, two blocks')

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in dataclasses.fields(self))

    def describe(self) -> str:
        """'6.1 GiB: weights 1.3, gradients 1.3, ...' (MiB below 1 GiB)."""
        parts = [(f.name if f.name != "gathered" else "FSDP buffers", getattr(self, f.name))
                 for f in dataclasses.fields(self)]
        unit, size = ("GiB", GIB) if self.total >= GIB else ("MiB", 2 ** 20)
        return f"{self.total / size:,.1f} {unit}: " + ", ".join(f"{name} {n / size:,.1f}" for name, n in parts if n)


GIB = 2 ** 30


def memory_estimate(cfg: RunConfig, device: torch.device, world: int = 1) -> MemoryEstimate:
    """A training step's peak memory on one process, before anything is allocated: the weights, their
    gradients and the optimizer state (each process's shard under FSDP), the activations one micro-batch
    saves for the backward (per token and layer, counted from what each path's ops save: the residual
    stream and norm statistics in fp32, the rest in the forward's dtype; with activation checkpointing
    each block's input plus one block's), the loss's logits, and FSDP's gathered weights and gradients.
    Everything is counted at once, as the CPU's allocation accounting sees a step (tests/test_parallel.py
    checks it within 15% of measured CPU peaks); on a GPU the backward frees activations as the
    gradients come, so it errs high there."""
    from smollm.kernels.cross_entropy import budget_chunk_rows

    m = cfg.model_config()
    P, D, L, F, V = m.n_params, m.hidden_size, m.num_hidden_layers, m.intermediate_size, m.vocab_size
    hq, hkv = m.num_attention_heads * m.head_dim, m.num_key_value_heads * m.head_dim
    sharded = world > 1 and cfg.parallel.strategy == "fsdp"
    local = -(-P // world) if sharded else P
    act = 2 if ran_dtype(cfg, device) == "bf16" else 4  # bytes an activation element
    N = cfg.train.micro_batch * cfg.data.seq_len  # tokens per micro-batch
    # Per token and layer: each norm's residual (fp32) and statistic, q, k, the fused qkv output (v is a
    # view of it), the attention's log-sum-exp, the o_proj input and q's copy, the MLP's gate-up output and
    # the swiglu output; the torch path's separate ops keep one more D (the norm) and one more F.
    fp32 = 2 + D + m.num_attention_heads  # the statistics, the residual, the log-sum-exp
    rest = (3 * D + 2 * hq + hkv + hq + 2 * hkv + 3 * F) + (D + hq + F if cfg.model.kernels == "torch" else 0)
    per_layer = N * (4 * fp32 + act * rest)
    if cfg.parallel.checkpoint_activations:
        activations = N * L * 2 * D * 4 + per_layer  # each block's inputs (the residual and the last branch), one block
    else:
        activations = L * per_layer
    if cfg.model.kernels == "torch":  # the logits, their log-softmax and its gradient, in fp32
        loss = 3 * N * V * 4
    else:  # one chunk of logits, the hidden states' gradient (the embedding's is the gradients' own)
        loss = budget_chunk_rows(N, V, act) * V * act + N * D * 4
    optimizer = 8 * local
    if cfg.optim.kind == "muon":  # momentum only, on the blocks' matrices; AdamW on the embedding and norms
        matrices = L * (D * (hq + 2 * hkv) + hq * D + 3 * D * F)
        optimizer = 4 * matrices + 8 * (P - matrices)
    gathered = 0
    if sharded:
        block = (P - V * D - D) // L
        pbytes = act if cfg.train.dtype == "bf16" else 4
        gathered = V * D * pbytes + 2 * V * D * 4 + 2 * block * pbytes + block * 4
    return MemoryEstimate(weights=4 * local, gradients=4 * local, optimizer=optimizer, activations=activations,
                          loss=loss, gathered=gathered)


def device_memory(device: torch.device) -> int | None:
    """All the memory of the device (the host's RAM for a CPU), or None where unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu" and hasattr(os, "sysconf"):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def _too_big(cfg: RunConfig, device: torch.device, why: str) -> ConfigError:
    more = [] if cfg.parallel.checkpoint_activations else ["parallel.checkpoint_activations=true"]
    more += [] if cfg.parallel.strategy == "fsdp" else ["parallel.strategy=fsdp over several GPUs"]
    return ConfigError(f"train.micro_batch={cfg.train.micro_batch} x data.seq_len={cfg.data.seq_len} does not fit in "
                       f"memory on {device} ({why}); lower train.micro_batch (and raise train.grad_accum)"
                       + "".join(f", or {m}" for m in more))


def check_fits(cfg: RunConfig, device: torch.device, world: int = 1) -> MemoryEstimate:
    """The step's memory estimate; a ConfigError at once, not after minutes of swapping or an OOM, when
    it exceeds the device's memory, naming the sizes."""
    need, have = memory_estimate(cfg, device, world), device_memory(device)
    if have is not None and need.total > have:
        raise _too_big(cfg, device, f"a step needs an estimated {need.describe()}; the device has "
                                    f"{have / GIB:,.1f} GiB")
    return need


@contextlib.contextmanager
def out_of_memory_is_config_error(cfg: RunConfig, device: torch.device):
    """An allocation that fails inside (a batch bigger than what check_fits could rule out) becomes a
    one-line ConfigError naming the micro-batch; other errors pass through."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        text = str(e).lower()
        if not isinstance(e, (torch.OutOfMemoryError, MemoryError)) and not any(
                m in text for m in ("out of memory", "not enough memory", "can't allocate memory")):
            raise
        raise _too_big(cfg, device, "an allocation failed") from None
