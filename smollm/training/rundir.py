"""The run directory a start takes (layout: smollm.runs): locked by rank 0 before anything in it is
read, refused when it already holds a run not being resumed, cleared of a killed checkpoint's leftovers,
and undone again when the start fails; then its identity written and its log opened."""

from __future__ import annotations

import contextlib
import os
import shutil

from smollm.checkpoint import list_checkpoints
from smollm.files import atomic_write_text, nearest_existing
from smollm.metrics import MetricsLog
from smollm.runs import TMP_PREFIX, Run, acquire_lock, release_lock
from smollm.remote.owner import write_identity
from smollm.samples import truncate_samples_after
from smollm.train_config import RunConfig
from smollm.training.parallel import Dist


def _first_missing(path: str) -> str | None:
    """The outermost directory of `path` that does not exist yet (what makedirs will create)."""
    path, missing = os.path.abspath(path), None
    while not os.path.exists(path):
        missing, path = path, os.path.dirname(path)
    return missing


def remove_created_dirs(run_dir: str, top: str | None) -> None:
    """After a failed start: the directories from run_dir up to `top` that this start created, if empty."""
    if top is None:
        return
    path = os.path.abspath(run_dir)
    while path == top or path.startswith(top + os.sep):
        try:
            os.rmdir(path)  # only when empty
        except OSError:
            return
        path = os.path.dirname(path)


def remove_checkpoint_leftovers(run: Run) -> None:
    """The temporary entries (.tmp-*) a kill mid-checkpoint left in <run>/checkpoints/."""
    root = run.checkpoints
    if not os.path.isdir(root):
        return
    names = sorted(n for n in os.listdir(root) if n.startswith(TMP_PREFIX))
    for name in names:
        path = os.path.join(root, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    if names:
        print(f"note: removed {len(names)} unfinished checkpoint temporar{'y' if len(names) == 1 else 'ies'} "
              f"left in {root} by an interrupted run: {', '.join(names)}", flush=True)


def _check_out_dir(path: str) -> None:
    """log.out_dir is a directory or can become one: else one line naming it (makedirs says "File exists")."""
    if os.path.islink(path) and not os.path.exists(path):
        raise FileExistsError(f"log.out_dir {path} is a symlink to {os.readlink(path)}, which does not exist; "
                              f"create that directory or choose another log.out_dir=...")
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"log.out_dir {path} is a file, not a directory; choose another log.out_dir=...")
    above = nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(above):
        raise FileExistsError(f"log.out_dir {path}: {above} is a file, not a directory; choose another "
                              f"log.out_dir=...")


def start_run_dir(cfg: RunConfig, d: Dist, resume: str | None) -> tuple[Run, str | None]:
    """The run directory, locked by rank 0 (smollm.runs.acquire_lock) before its checkpoints are read: a
    second start of a live run is "in use by pid N", never a half-written checkpoint read. Also returns
    the outermost directory this start created (None: none), removed again if the start fails while it
    is empty."""
    run = Run(cfg.log.out_dir)
    created = None
    if d.main:
        if resume is None and list_checkpoints(run.path):
            raise FileExistsError(f"{run.path} already holds a run with checkpoints; continue it with --resume, "
                                  f"or choose another log.out_dir=...")
        _check_out_dir(run.path)
        created = _first_missing(run.path)
        os.makedirs(run.path, exist_ok=True)
        try:
            acquire_lock(run.path)
        except BaseException:
            remove_created_dirs(run.path, created)
            raise
        try:
            remove_checkpoint_leftovers(run)
        except BaseException:
            release_lock(run.path)
            remove_created_dirs(run.path, created)
            raise
    return run, created


def open_log(cfg: RunConfig, run: Run, step: int, identity: dict) -> MetricsLog:
    """The run's identity (smollm.remote.owner), metrics.jsonl and the samples cut back to `step` (a
    resumed run writes what came after its checkpoint again), and config.yaml of this start."""
    write_identity(run.path, identity)
    log = MetricsLog(run.path, cfg.log.tensorboard)
    log.truncate_after(step)
    truncate_samples_after(run.path, step, run.title)
    atomic_write_text(run.config, cfg.to_yaml())
    return log
