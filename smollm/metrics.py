"""Throughput accounting (FLOPs per token, MFU, peak memory), the time a run has left, the run's metrics log
and its console."""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable

import torch

from smollm.config import ModelConfig
from smollm.files import atomic_write_bytes, read_jsonl
from smollm.runs import Run

# Dense bf16 tensor-core peaks in TFLOP/s (no sparsity). Matched against torch.cuda.get_device_name
# in this order, so "A100" does not catch an "A10G".
PEAK_TFLOPS_BF16 = [("A10G", 70.0), ("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0),
                    ("L4", 121.0), ("A10", 125.0)]


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) as in PaLM's appendix B and nanoGPT: 6 per
    matmul weight (the tied embedding counts once, as the LM head; norms are not matmuls) plus
    the attention scores and values, 12 * layers * heads * head_dim * T. Causal attention is
    counted in full, as those references do, so figures compare across projects."""
    n_matmul = cfg.n_params - (2 * cfg.num_hidden_layers + 1) * cfg.hidden_size
    attn = 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * seq_len
    return 6 * n_matmul + attn


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf for key, tf in PEAK_TFLOPS_BF16 if key in name), None)


def mfu(tokens_per_s: float, cfg: ModelConfig, seq_len: int, device: torch.device) -> float | None:
    peak = peak_tflops(device)
    return None if peak is None else tokens_per_s * flops_per_token(cfg, seq_len) / (peak * 1e12)


def peak_memory_mb(device: torch.device) -> float:
    """GPU: the allocator's high-water mark. CPU: the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2 ** 20 if sys.platform == "darwin" else rss / 2 ** 10  # bytes on macOS, KiB on Linux


class Eta:
    """The time a run has left until its step `total`, from the wall-clock rate of the steps this
    process has run. The clock starts when the process's first step ends: that step compiles and
    warms caches, and can take many times an ordinary one. Evaluations and checkpoints count, as
    they come back at the same pace through the steps left as through those done."""

    def __init__(self, total: int, clock: Callable[[], float] = time.perf_counter):
        self.total, self.clock = total, clock
        self.start: tuple[int, float] | None = None  # (step, time) at the end of this process's first step

    def stepped(self, step: int) -> None:
        """Step `step` has just been run (queued, on a GPU: the steps that log wait for the device)."""
        if self.start is None:
            self.start = (step, self.clock())

    def seconds_left(self, step: int) -> float | None:
        """Seconds until step `total` from step `step`; None before a step past the first is done."""
        if self.start is None or step <= self.start[0]:
            return None
        first, t0 = self.start
        return (self.clock() - t0) / (step - first) * max(self.total - step, 0)


def format_duration(seconds: float | None) -> str:
    """'45s', '12m05s', '3h07m' (seconds are noise at that scale); '?' when not known yet."""
    if seconds is None:
        return "?"
    s = max(round(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl (and TensorBoard scalars when available)."""

    def __init__(self, run_dir: str, tensorboard: bool = True):
        self.path = Run(run_dir).metrics
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(Run(run_dir).tensorboard)
            except ImportError:  # tensorboard not installed: the JSON lines are the record
                pass

    def write(self, record: dict):
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key not in ("step", "tokens") and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, record["step"])

    def truncate_after(self, step: int):
        """Forget lines written after `step` (a resumed run writes them again)."""
        if not os.path.exists(self.path):
            return
        # read_jsonl drops a torn last line (a kill mid-write) with a warning; the rewrite removes it
        keep = [r for r in read_jsonl(self.path) if r["step"] <= step]
        atomic_write_bytes(self.path, [(json.dumps(r) + "\n").encode() for r in keep])

    def close(self):
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: str) -> list[dict]:
    return read_jsonl(Run(run_dir).metrics)


class Console:
    """The run's console lines: printed above the progress bar and appended to <run>/train.log (a
    record of the run without the bar's carriage returns). Callable from any thread."""

    def __init__(self, run_dir: str | None):
        self._path = Run(run_dir).console_log if run_dir else None  # opened at the first line said
        self._file = None
        self._lock = threading.Lock()

    def say(self, line: str, err: bool = False) -> None:
        from tqdm import tqdm

        with self._lock:
            tqdm.write(line, file=sys.stderr if err else sys.stdout)
            if self._path is not None:
                if self._file is None:
                    self._file = open(self._path, "a")  # noqa: SIM115 -- held for the run, closed by close()
                self._file.write(line + "\n")
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
            self._file = self._path = None
