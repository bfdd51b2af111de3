"""Uploads: the background Uploader that mirrors a run to its own remote copy after each checkpoint,
and upload_dir() for `train.py export RUN URL`."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

from smollm.remote.owner import claim, read_owner
from smollm.remote.store import RemoteError, Store, connect, describe, retry
from smollm.runs import CHECKPOINT_INFO, CHECKPOINTS, LATEST, RUN_FILES, STEP_NAME, TRAINER_STATE, Run, is_trainer_state


class Uploader:
    """Mirrors a local run directory to a Store from one background thread. sync() asks for a pass
    (after each checkpoint; passes asked for while one runs are merged into the next); close() waits,
    for a bounded time, until every pass asked for is done.

    Each pass first lists what the store holds: a checkpoint counts as uploaded only while its files
    are there at their sizes (a store that lost objects gets them again, said in a warning). With an
    owner (smollm.remote.owner.owner_record), the first pass writes it as the store's owner.json, and a
    store whose owner.json later names another run directory is no longer written (said once)."""

    def __init__(self, run: Run, store: Store, keep_trainer_states: int,
                 warn: Callable[[str], None] | None = None, owner: dict | None = None):
        self.run, self.store, self.keep, self.owner = run, store, keep_trainer_states, owner
        self.warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
        self.uploaded: dict[str, bytes] = {}  # checkpoint name -> the checkpoint.json it was uploaded with
        self.error: str | None = None  # the cause of the last pass's failure, None once a pass succeeds
        self.lost: str | None = None  # why this run no longer writes the store (another run owns it)
        self._claimed = False
        self._cv = threading.Condition()
        self._pending = self._busy = self._closed = False
        self._thread = threading.Thread(target=self._loop, name="smollm-upload", daemon=True)
        self._thread.start()

    def sync(self) -> None:
        with self._cv:
            self._pending = True
            self._cv.notify_all()

    def wait(self, timeout: float) -> bool:
        """Wait at most timeout seconds until the passes asked for are done; whether they are."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while (self._pending or self._busy) and time.monotonic() < deadline:
                self._cv.wait(max(0.0, deadline - time.monotonic()))
            return not (self._pending or self._busy)

    def close(self, timeout: float) -> list[str]:
        """The thread told to end once the passes asked for are done, waited for at most timeout
        seconds; what is still not uploaded (empty when everything is)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        done = self.wait(timeout)
        return self.missing() if not done or self.error or self.lost else []

    def missing(self) -> list[str]:
        """Local checkpoints not (yet) in the store as they are here."""
        return [name for name, info in self._local_checkpoints() if self.uploaded.get(name) != info]

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if not self._pending:
                    return
                self._pending, self._busy = False, True
            try:
                self._pass()
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _local_checkpoints(self) -> list[tuple[str, bytes]]:
        """(name, checkpoint.json bytes) of the local run's finished checkpoints, oldest first."""
        root = self.run.checkpoints
        found = []
        for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            info = os.path.join(root, name, CHECKPOINT_INFO)
            if STEP_NAME.match(name) and os.path.isfile(info):
                with open(info, "rb") as f:
                    found.append((name, f.read()))
        return found

    def _pass(self) -> None:
        if self.lost:
            return
        try:
            if not self._own():
                return
            there = self.store.files(CHECKPOINTS)  # what the store holds, not what this process sent it
            lost = []
            for name, info in self._local_checkpoints():
                have = {f[len(name) + 1:]: size for f, size in there.items() if f.startswith(name + "/")}
                if self._complete(name, info, have):
                    self.uploaded[name] = info
                    continue
                if name in self.uploaded:
                    lost.append(name)
                    del self.uploaded[name]
                self._upload_checkpoint(name, info, have)
                sizes = _sizes(os.path.join(self.run.checkpoints, name))
                there.update({f"{name}/{f}": size for f, size in sizes.items()})
            if lost:
                self.warn(f"warning: remote: {self.store.url} had lost {', '.join(lost)} (uploaded before); uploaded "
                          f"again")
            self._prune_trainer_states(there)
            for name in RUN_FILES:
                if os.path.isfile(self.run.file(name)):
                    retry(lambda n=name: self.store.put(self.run.file(n), n))
            latest = _read_local_latest(self.run)
            if latest in self.uploaded:  # last: the remote latest only ever names a finished checkpoint
                retry(lambda: self.store.write(f"{CHECKPOINTS}/{LATEST}", latest.encode() + b"\n"))
            self.error = None
        except Exception as e:  # noqa: BLE001 -- the run goes on; the next pass uploads what is missing
            self.error = describe(e)
            missing = ", ".join(self.missing()) or "the run's files"
            self.warn(f"warning: remote: {missing} not uploaded to {self.store.url} ({self.error}); training goes "
                      f"on, the next checkpoint tries again")

    def _own(self) -> bool:
        """Whether this run still writes the store: its first pass claims it (the start checked it may:
        smollm.remote.owner.check_owner); later, an owner.json naming another directory stops it."""
        if self.owner is None:
            return True
        owner = read_owner(self.store)
        if self._claimed and owner != self.owner or not self._claimed and owner and owner["id"] != self.owner["id"]:
            whose = f"{owner['path']} on {owner['host']}" if owner else "nobody (its owner.json is gone)"
            self.lost = f"{self.store.url} is now the copy of {whose}"
            self.warn(f"warning: remote: {self.lost}; this run no longer uploads there (its checkpoints stay in "
                      f"{self.run.checkpoints})")
            return False
        if not self._claimed:
            claim(self.store, self.owner)
            self._claimed = True
        return True

    def _complete(self, name: str, info: bytes, have: dict[str, int]) -> bool:
        """Whether the store holds the local checkpoint `name` whole: every file at its size, and the
        same checkpoint.json (read back unless this uploader wrote it)."""
        local = _sizes(os.path.join(self.run.checkpoints, name))
        if any(have.get(f) != size for f, size in local.items()):
            return False
        if self.uploaded.get(name) == info:
            return True
        return retry(lambda: self.store.read(f"{CHECKPOINTS}/{name}/{CHECKPOINT_INFO}")) == info

    def _upload_checkpoint(self, name: str, info: bytes, have: dict[str, int]) -> None:
        """The files of the local checkpoint `name` the store lacks (all of them when the store holds
        another checkpoint of that step: a resume from before it), then its checkpoint.json."""
        rel = f"{CHECKPOINTS}/{name}"
        same = False
        if CHECKPOINT_INFO in have:
            same = retry(lambda: self.store.read(f"{rel}/{CHECKPOINT_INFO}")) == info
            # Unfinished first: a reader never takes a checkpoint whose files are being replaced.
            retry(lambda: self.store.remove(f"{rel}/{CHECKPOINT_INFO}"))
        local = os.path.join(self.run.checkpoints, name)
        for f, size in sorted(_sizes(local).items()):
            if f != CHECKPOINT_INFO and not (same and have.get(f) == size):
                self._put_unless_pruned(local, f, f"{rel}/{f}")
        retry(lambda: self.store.write(f"{rel}/{CHECKPOINT_INFO}", info))
        self.uploaded[name] = info

    def _put_unless_pruned(self, ckpt: str, name: str, rel: str) -> None:
        """The checkpoint ckpt's file name to rel; nothing when it is an optimizer state the run pruned
        meanwhile (a newer checkpoint came while this one was on its way: the remote prunes it too)."""
        local = os.path.join(ckpt, name)
        try:
            retry(lambda: self.store.put(local, rel))
        except FileNotFoundError:
            if os.path.exists(local) or not is_trainer_state(name):
                raise

    def _prune_trainer_states(self, there: dict[str, int]) -> None:
        """The remote keeps the optimizer states of its newest keep_trainer_states checkpoints, as the
        local run does (smollm.checkpoint.save_checkpoint); `there`: the store's files (this pass's)."""
        names = sorted({f.split("/", 1)[0] for f in there if f.endswith(f"/{TRAINER_STATE}")
                        and f"{f.split('/', 1)[0]}/{CHECKPOINT_INFO}" in there and STEP_NAME.match(f.split("/", 1)[0])},
                       key=lambda n: int(STEP_NAME.match(n).group(1)))
        for name in names[:-self.keep]:
            for f in [f for f in there if f.startswith(f"{name}/") and is_trainer_state(f[len(name) + 1:])]:
                retry(lambda f=f: self.store.remove(f"{CHECKPOINTS}/{f}"))  # trainer_state.pt, optimizer/ shards


def _sizes(directory: str) -> dict[str, int]:
    """{file path inside it: size} of a local checkpoint directory, its shards' directories too (a file
    pruned meanwhile is left out)."""
    out = {}
    for root, _, names in os.walk(directory):
        rel = os.path.relpath(root, directory)
        for name in names:
            try:
                out[name if rel == "." else f"{rel}/{name}".replace(os.sep, "/")] = os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return out

def _read_local_latest(run: Run) -> str | None:
    try:
        with open(run.latest) as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None



def upload_dir(local: str, url: str, options: dict | None = None, overwrite: bool = False) -> None:
    """Every file under the local directory local to url (train.py export RUN s3://...): refused when
    url already holds files, unless overwrite."""
    store = connect(url, options, where="export")
    try:
        if store.listdir("") and not overwrite:
            raise FileExistsError(f"{url} already holds files; pass --overwrite to replace them")
        for dirpath, _, names in os.walk(local):
            for n in sorted(names):
                path = os.path.join(dirpath, n)
                rel = os.path.relpath(path, local).replace(os.sep, "/")
                retry(lambda p=path, r=rel: store.put(p, r))
    except FileExistsError:
        raise
    except Exception as e:  # noqa: BLE001
        raise RemoteError(f"export: cannot write to {url} ({describe(e)})") from None
