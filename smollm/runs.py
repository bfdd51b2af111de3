"""The layout of a run directory, named here and nowhere else:

    <run>/config.yaml           the run's configuration (train.py writes it at every start)
    <run>/metrics.jsonl         one JSON object per log line or evaluation
    <run>/samples.jsonl         continuations of the fixed prompts at every checkpoint (the data)
    <run>/samples.md            the same, to read
    <run>/loss.png              the loss curve
    <run>/train.log             what the run printed (its console lines, without the progress bar)
    <run>/tensorboard/          the same scalars for TensorBoard (when it is installed)
    <run>/train.lock            while a run trains into it: {pid, host, started} of that process
    <run>/run.json              the run's identity: {id, home, remote} (smollm.remote.owner)
    <run>/checkpoints/latest    the name of the newest checkpoint
    <run>/checkpoints/step_000123/
        model.safetensors, config.json, generation_config.json, tokenizer files: a Hugging Face directory
        trainer_state.pt        optimizer, scheduler, step, tokens, RNG states (pruned in older ones)
        checkpoint.json         step, tokens, losses (kept when trainer_state.pt is pruned)
        run_config.yaml         the run's configuration when the checkpoint was written

A remote copy (smollm.remote) has the same layout, plus owner.json: {id, path, host} of the run
directory that writes it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass

CHECKPOINTS = "checkpoints"
LATEST = "latest"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SAMPLES_JSONL = "samples.jsonl"
SAMPLES_MD = "samples.md"
LOSS_PNG = "loss.png"
CONSOLE_LOG = "train.log"
TENSORBOARD = "tensorboard"
LOCK = "train.lock"
RUN_ID = "run.json"
OWNER = "owner.json"  # in a remote copy only
TMP_PREFIX = ".tmp-"  # smollm.files' temporary names: what a kill mid-checkpoint leaves behind
# Inside a checkpoint directory (besides the Hugging Face files, smollm.weights)
TRAINER_STATE = "trainer_state.pt"
# A sharded checkpoint's (parallel.strategy=fsdp) torch.distributed.checkpoint directories: the weights,
# and the optimizer state, pruned with trainer_state.pt.
MODEL_SHARDS = "model"
OPTIMIZER_SHARDS = "optimizer"
CHECKPOINT_INFO = "checkpoint.json"
RUN_CONFIG = "run_config.yaml"
STEP_NAME = re.compile(r"^step_(\d+)$")
# The run's own files besides its checkpoints: what a remote copy of a run holds (smollm.remote)


def is_trainer_state(name: str) -> bool:
    """Whether a checkpoint's file (its path inside the checkpoint) is the optimizer state that older
    checkpoints lose (smollm.checkpoint.save_checkpoint): trainer_state.pt, or a file under optimizer/."""
    return name == TRAINER_STATE or name.startswith(OPTIMIZER_SHARDS + "/")


RUN_FILES = (CONFIG, METRICS, SAMPLES_JSONL, SAMPLES_MD, LOSS_PNG, CONSOLE_LOG)


@dataclass(frozen=True)
class Run:
    """Paths of one run directory (nothing is created by naming them)."""

    path: str

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def title(self) -> str:
        return os.path.basename(os.path.abspath(self.path))

    @property
    def config(self) -> str:
        return self.file(CONFIG)

    @property
    def metrics(self) -> str:
        return self.file(METRICS)

    @property
    def samples_jsonl(self) -> str:
        return self.file(SAMPLES_JSONL)

    @property
    def samples_md(self) -> str:
        return self.file(SAMPLES_MD)

    @property
    def loss_png(self) -> str:
        return self.file(LOSS_PNG)

    @property
    def console_log(self) -> str:
        return self.file(CONSOLE_LOG)

    @property
    def tensorboard(self) -> str:
        return self.file(TENSORBOARD)

    @property
    def identity(self) -> str:
        return self.file(RUN_ID)

    @property
    def lock(self) -> str:
        return self.file(LOCK)

    @property
    def checkpoints(self) -> str:
        return self.file(CHECKPOINTS)

    @property
    def latest(self) -> str:
        return os.path.join(self.checkpoints, LATEST)

    def checkpoint(self, step: int) -> str:
        return os.path.join(self.checkpoints, f"step_{step:06d}")


def run_of_checkpoint(ckpt: str) -> str | None:
    """The run directory a checkpoint belongs to (<run>/checkpoints/step_N), or None for a loose one."""
    ckpt = os.path.normpath(ckpt)
    parent = os.path.dirname(ckpt)
    if os.path.basename(parent) != CHECKPOINTS:
        return None
    return os.path.dirname(parent) or "."


def is_run_dir(path: str) -> bool:
    """A directory that holds (or held) checkpoints."""
    return os.path.isdir(Run(path).checkpoints)


class RunLocked(FileExistsError):
    """Another live process trains into this run directory."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def acquire_lock(run_dir: str) -> str:
    """Take <run>/train.lock for this process ({pid, host, started}). A lock of a live process, or of
    another host (whose processes cannot be checked), refuses with RunLocked naming the holder; a
    lock of a dead process of this host is taken over with a warning. Returns the lock's path."""
    path = Run(run_dir).lock
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(me, f)
    try:
        for _ in range(2):
            try:
                os.link(tmp, path)  # atomic, and the lock is whole when it appears
                return path
            except FileExistsError:
                pass
            try:
                holder = _lock_holder(path)
            except FileNotFoundError:
                continue  # released meanwhile
            if holder is not None and _holds(*holder):
                raise RunLocked(_in_use(run_dir, *holder))
            what = (f"pid {holder[0]} on this host, started {holder[2]}, is no longer running" if holder is not None
                    else "it is unreadable")
            print(f"warning: taking over the stale lock {path} ({what})", file=sys.stderr, flush=True)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        raise RunLocked(f"{run_dir}: could not take the lock file {path}; another run is starting there")
    finally:
        os.unlink(tmp)


def _lock_holder(path: str) -> tuple[int, str, str] | None:
    """(pid, host, started) of a lock file; None when it is unreadable (FileNotFoundError: there is none)."""
    try:
        with open(path) as f:
            holder = json.load(f)
        return int(holder["pid"]), str(holder["host"]), str(holder.get("started", "?"))
    except FileNotFoundError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, OSError):
        return None


def _holds(pid: int, host: str, started: str) -> bool:
    """Whether the lock's holder still runs: a process of this host that is alive, or any of another
    host (whose processes cannot be checked)."""
    return host != socket.gethostname() or _pid_alive(pid)


def _in_use(run_dir: str, pid: int, host: str, started: str) -> str:
    where = "this host" if host == socket.gethostname() else f"host {host}"
    return (f"{run_dir} is in use by another run (pid {pid} on {where}, started {started}; lock file "
            f"{Run(run_dir).lock}); wait for it to end, or choose another log.out_dir=...")


def refuse_if_locked(run_dir: str) -> None:
    """RunLocked when a live process (or one on another host) holds the run's lock: checked before
    reading a run's checkpoints, which that process may be writing (acquire_lock takes it later)."""
    try:
        holder = _lock_holder(Run(run_dir).lock)
    except FileNotFoundError:
        return
    if holder is not None and _holds(*holder):
        raise RunLocked(_in_use(run_dir, *holder))


def release_lock(run_dir: str) -> None:
    """Remove <run>/train.lock if this process holds it."""
    path = Run(run_dir).lock
    try:
        with open(path) as f:
            holder = json.load(f)
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            os.unlink(path)
    except (OSError, ValueError, AttributeError):
        pass
