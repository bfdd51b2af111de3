"""Where a step runs, in what precision, and whether it fits: the device of this process, the dtype of
the forward (autocast), and the memory checks that turn a batch too big into one line naming it."""

from __future__ import annotations

import contextlib
import os

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


def memory_floor(cfg: RunConfig, device: torch.device) -> int:
    """Bytes that a training step needs at the least: the fp32 weights and AdamW's two moments (12
    bytes a parameter, kept from step to step; the gradients come and go), one saved activation of
    the residual stream per layer, and, on the torch path, the (micro_batch x seq_len, vocab)
    log-probabilities and their gradient, alive together in the backward (the Triton path's fused
    loss holds one chunk of them). A lower bound: a step over it cannot fit; one under it may still
    not."""
    m = cfg.model_config()
    tokens = cfg.train.micro_batch * cfg.data.seq_len
    act = 2 if ran_dtype(cfg, device) == "bf16" else 4  # bytes an activation element
    logits = 0 if cfg.model.kernels == "triton" else 2 * tokens * m.vocab_size * act
    return 12 * m.n_params + tokens * m.hidden_size * m.num_hidden_layers * act + logits


def device_memory(device: torch.device) -> int | None:
    """All the memory of the device (the host's RAM for a CPU), or None where unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu" and hasattr(os, "sysconf"):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def _too_big(cfg: RunConfig, device: torch.device, why: str) -> ConfigError:
    return ConfigError(f"train.micro_batch={cfg.train.micro_batch} x data.seq_len={cfg.data.seq_len} does not fit in "
                       f"memory on {device} ({why}); lower train.micro_batch (and raise train.grad_accum)")


def check_fits(cfg: RunConfig, device: torch.device) -> None:
    """Fail at once, not after minutes of swapping, when a step cannot fit in the device's memory."""
    need, have = memory_floor(cfg, device), device_memory(device)
    if have is not None and need > have:
        raise _too_big(cfg, device, f"a step needs at least {need / 2 ** 30:,.1f} GiB, the device has "
                                    f"{have / 2 ** 30:,.1f} GiB")


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
