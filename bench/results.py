"""The one results convention of bench/: every benchmark writes rows of one schema (Row) through one
writer, to files named by one rule.

    <out>/<benchmark>_<device-slug>.jsonl   one Row per line (the record; bench/report.py reads these)
    <out>/<benchmark>_<device-slug>.md      the benchmark's own rendering of those rows

<benchmark> is the module's name (kernels, train_step, gpu_check, ...); <device-slug> is
device_slug(the device's name): "cpu", or the GPU's model ("a10g", "h100", "rtx-4090"). What else
describes the machine (core count, memory, the full GPU name) is in the rows, not in the name.

Each benchmark owns its headlines: the summary lines it wants shown first. They travel in the rows
(Row.headlines; by convention on the last row, a summary row), so a report can collect them from
any benchmark's file without knowing its keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Sequence

from smollm.files import atomic_write_text, read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "bench", "results")
STATUSES = ("ok", "skipped", "error")


@dataclasses.dataclass
class Row:
    """One measurement (or one summary of several). `parameters`: what was measured, the row's
    inputs and labels (op, tokens, preset, ...); `metrics`: what the run produced (times, rates,
    memory; for an error row its traceback). A row that did not run says why: status "skipped" or
    "error", with `reason`. `headlines`: summary lines the benchmark wants shown first."""

    benchmark: str
    device: str  # the device's full name, as device_name() gives it
    commit: str
    time: str  # ISO 8601, UTC
    versions: dict  # torch, triton, python
    parameters: dict = dataclasses.field(default_factory=dict)
    metrics: dict = dataclasses.field(default_factory=dict)
    status: str = "ok"
    reason: str | None = None
    headlines: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"Row.status must be one of {STATUSES}, got {self.status!r}")

    def flat(self) -> dict:
        """parameters, metrics, status and reason in one dict: what a table renders from (the
        benchmarks keep the two key sets apart, so nothing is shadowed)."""
        return {**self.parameters, **self.metrics, "status": self.status, "reason": self.reason}

    @property
    def is_summary(self) -> bool:
        return "summary" in self.parameters

    def to_json(self) -> str:
        # default=str: a dtype or a path in a parameter is written as its text, never an exception mid-run
        return json.dumps(dataclasses.asdict(self), default=str)

    @classmethod
    def from_dict(cls, d: dict) -> "Row":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ---- who, where, when ----

def device_name(device) -> str:
    """The device's full name: the GPU's ("NVIDIA H100 80GB HBM3"), or "cpu (N cores)"."""
    kind = device if isinstance(device, str) else device.type
    if kind.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores)"


_VENDOR_WORDS = {"nvidia", "geforce", "tesla", "amd", "instinct"}
_VARIANT_WORD = re.compile(r"^(\d+gb|hbm\d*e?|pcie|sxm\d*|nvl|mig)$")  # memory, bus, form factor: same chip


def device_slug(name: str) -> str:
    """The device part of a results file name, from device_name(): "cpu (2 cores)" -> "cpu",
    "NVIDIA H100 80GB HBM3" -> "h100", "NVIDIA A100-SXM4-80GB" -> "a100", "NVIDIA A10G" -> "a10g",
    "NVIDIA GeForce RTX 4090" -> "rtx-4090". Memory size, bus and form factor are left out: the
    rows carry the full name."""
    low = name.lower()
    if low == "cpu" or low.startswith("cpu "):
        return "cpu"
    words = [w for w in re.split(r"[^a-z0-9]+", low) if w and w not in _VENDOR_WORDS and not _VARIANT_WORD.match(w)]
    return "-".join(words) or "gpu"


def results_path(out_dir: str, benchmark: str, device: str, ext: str) -> str:
    """<out_dir>/<benchmark>_<device-slug>.<ext>; `device` is the device's name (device_name())."""
    return os.path.join(out_dir, f"{benchmark}_{device_slug(device)}.{ext}")


def git_commit() -> str:
    """$SMOLLM_COMMIT when set (a copy of the tree run elsewhere, as on a lent GPU machine, whose .git, if
    any, is not this checkout's: one such copy reported the session's first commit), else the checkout's
    commit (+"-dirty" when tracked files differ), else "unknown"."""
    if os.environ.get("SMOLLM_COMMIT"):
        return os.environ["SMOLLM_COMMIT"]
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode == 0 and head.stdout.strip():
            dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def versions() -> dict:
    """torch, triton and Python versions; a module already imported reports its own __version__ (a
    source build's metadata can differ), else the installed distribution's, without importing it."""
    out = {}
    for name in ("torch", "triton"):
        module = sys.modules.get(name)
        try:
            out[name] = getattr(module, "__version__", None) or importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(frozen=True)
class Stamp:
    """What every row of one run shares; `row()` makes a row of this run, timed when it is made."""

    benchmark: str
    device: str
    commit: str
    versions: dict

    def row(self, parameters: dict | None = None, metrics: dict | None = None, *, status: str = "ok",
            reason: str | None = None, headlines=()) -> Row:
        return Row(self.benchmark, self.device, self.commit, now_utc(), dict(self.versions), dict(parameters or {}),
                   dict(metrics or {}), status, reason, list(headlines))

    def summary(self, headlines, metrics: dict | None = None, **parameters) -> Row:
        """The run's summary row: its headlines, and the metrics derived from several rows (ratios)."""
        return self.row({"summary": self.benchmark, **parameters}, metrics, headlines=headlines)

    def path(self, out_dir: str, ext: str) -> str:
        return results_path(out_dir, self.benchmark, self.device, ext)


def stamp(benchmark: str, device) -> Stamp:
    """The stamp of a run of `benchmark` (the module's name) on `device` (a torch.device, "cpu",
    "cuda", or a device name)."""
    name = device if isinstance(device, str) and device not in ("cpu", "cuda") else device_name(device)
    return Stamp(benchmark, name, git_commit(), versions())


# ---- reading and writing ----

def write_rows(out_dir: str, rows: list[Row], md: str) -> str:
    """The whole record of one run, atomically: <benchmark>_<device-slug>.jsonl and .md (a killed
    run leaves the previous files whole), named after the last row, the run's own summary (rows
    before it may be an earlier run's, shown for comparison). Returns the .jsonl path."""
    if not rows:
        raise ValueError("write_rows: no rows (a run records at least its summary row)")
    last = rows[-1]
    os.makedirs(out_dir, exist_ok=True)
    jsonl = results_path(out_dir, last.benchmark, last.device, "jsonl")
    atomic_write_text(jsonl, "".join(r.to_json() + "\n" for r in rows))
    atomic_write_text(results_path(out_dir, last.benchmark, last.device, "md"), md)
    return jsonl


def publish(out_dir: str, rows: list[Row], md: str, failures: Sequence[str] = (), *, echo_failures: bool = True) -> int:
    """The end of every benchmark's main() that writes its record at the end: its rows written (write_rows), its
    Markdown printed, then each of `failures` (what failed, a line each) on stderr as "FAIL <line>" unless
    echo_failures is off (a Markdown that lists them already); returns the exit status: 1 if anything failed,
    else 0. (bench/gpu_check, which records each row as it is measured, ends through its Recorder.)"""
    failures = list(failures)
    write_rows(out_dir, rows, md)
    print(md)
    if echo_failures:
        for line in failures:
            print("FAIL", line, file=sys.stderr)
    return 1 if failures else 0


def cli(doc: str) -> argparse.ArgumentParser:
    """The argument parser of a benchmark, whose --help shows its module docstring whole."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def append_row(path: str, row: Row) -> None:
    """One row at the end of a .jsonl, flushed and fsynced: for a run that records as it goes
    (bench/gpu_check), so whatever kills it, every row before is on disk."""
    with open(path, "a") as f:
        f.write(row.to_json() + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_rows(path: str) -> list[Row]:
    return [Row.from_dict(d) for d in read_jsonl(path)]


def headlines(rows: list[Row]) -> list[str]:
    """Every headline of these rows, in order."""
    return [h for r in rows for h in r.headlines]


# ---- Markdown shared by every benchmark's rendering ----

def provenance_md(row: Row, command: str | None = None) -> str:
    """One line: what ran, where, at which commit, with which versions."""
    v = row.versions
    ran = f"`{command}` on " if command else ""
    return (f"{ran}{row.device}, commit {row.commit}, {row.time}; torch {v.get('torch')}, triton {v.get('triton')}, "
            f"Python {v.get('python')}.")


def headlines_md(rows: list[Row]) -> list[str]:
    heads = headlines(rows)
    return ["## Headlines", ""] + [f"- {h}" for h in heads] + [""] if heads else []
