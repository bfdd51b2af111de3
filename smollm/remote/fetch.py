"""Downloads: fetch_run() brings a run back for --resume, fetch_weights() the weights of its newest
good checkpoint for generate.py and the app (cached); each checkpoint checked against its checkpoint.json."""

from __future__ import annotations

import hashlib
import os
import sys
import uuid
from collections.abc import Callable

from smollm.checkpoint import CheckpointError, list_checkpoints, verify_checkpoint
from smollm.files import atomic_dir, atomic_write_bytes, cache_root, nearest_existing
from smollm.remote.owner import read_owner, write_identity
from smollm.remote.store import RemoteError, Store, connect, describe, retry
from smollm.runs import CHECKPOINT_INFO, CHECKPOINTS, RUN_FILES, STEP_NAME, TRAINER_STATE, Run, is_trainer_state

def _fetch_checkpoint(store: Store, name: str, dest: str, with_state: bool) -> None:
    """store's checkpoints/name into the local directory dest (atomically), checked against its
    checkpoint.json's sha256 (a CheckpointError naming the bad file)."""
    rel = f"{CHECKPOINTS}/{name}"
    with atomic_dir(dest, overwrite=True) as tmp:
        for f in store.files(rel):  # a sharded checkpoint's model/ and optimizer/ files too
            if not is_trainer_state(f) or with_state:
                os.makedirs(os.path.dirname(os.path.join(tmp, f)), exist_ok=True)
                retry(lambda f=f: store.fs.get_file(store.path(f"{rel}/{f}"), os.path.join(tmp, f)))
        verify_checkpoint(tmp, skip=() if with_state else (TRAINER_STATE,))


def _candidates(store: Store, with_state: bool) -> list[str]:
    """The remote latest checkpoint first, then the earlier finished ones, newest first; with_state:
    only those with a trainer state, each newer one without it named in a warning."""
    latest = store.latest()
    if latest is None:
        return []
    step = int(STEP_NAME.match(latest).group(1))
    earlier = [n for s, n in reversed(store.checkpoints()) if s < step]
    names = [latest, *earlier]
    if with_state:
        usable = [n for n in names if store.exists(f"{CHECKPOINTS}/{n}/{TRAINER_STATE}")]
        skipped = names[:names.index(usable[0])] if usable else names
        if usable and skipped:
            print(f"warning: {', '.join(f'{store.url}/{CHECKPOINTS}/{n}' for n in skipped)} "
                  f"{'has' if len(skipped) == 1 else 'have'} no {TRAINER_STATE} (lost from the store?); resuming from "
                  f"{usable[0]}, the newest checkpoint there with one", file=sys.stderr, flush=True)
        names = usable
    return names


def _newest_good(store: Store, names: list[str], dest_of: Callable[[str], str], with_state: bool) -> str:
    problems = []
    for name in names:
        try:
            _fetch_checkpoint(store, name, dest_of(name), with_state)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if problems:
            print(f"warning: {'; '.join(problems)}; using {store.url}/{CHECKPOINTS}/{name} instead, the newest good "
                  f"checkpoint", file=sys.stderr, flush=True)
        return name
    raise RemoteError(f"{store.url}: no checkpoint there can be used"
                      + (f": {'; '.join(problems)}" if problems else " (none is finished)"))


def fetch_run(url: str, dest: str, options: dict | None = None) -> str:
    """The run at url brought to the local directory dest, which must not hold checkpoints: its files
    and its newest resumable checkpoint (verified; a bad one falls back to the one before). Returns
    dest, a run directory to resume."""
    if list_checkpoints(dest):
        raise FileExistsError(f"{dest} already holds a run with checkpoints; resume it with --resume {dest}, or "
                              f"fetch {url} into another log.out_dir=...")
    store = connect(url, options, where="--resume")
    try:
        owner = read_owner(store)
        names = _candidates(store, with_state=True)
        if not names:
            raise RemoteError(f"--resume: {url} holds no finished checkpoint with a trainer state")
        os.makedirs(dest, exist_ok=True)
        run = Run(dest)
        for name in RUN_FILES:
            if store.exists(name):
                store.get(name, run.file(name))
        name = _newest_good(store, names, lambda n: os.path.join(run.checkpoints, n), with_state=True)
    except (RemoteError, FileExistsError):
        raise
    except Exception as e:  # noqa: BLE001
        raise RemoteError(f"--resume: cannot read {url} ({describe(e)})") from None
    atomic_write_bytes(run.latest, [name.encode() + b"\n"])
    # Fetched from url: this directory may take that copy over (smollm.remote.owner.check_owner).
    write_identity(dest, {"id": owner["id"] if owner else uuid.uuid4().hex, "home": os.path.realpath(dest),
                          "remote": store.url})
    return dest


def cache_dir(url: str) -> str:
    """Where fetch_weights keeps the checkpoints of url, under smollm.files.cache_root()."""
    return os.path.join(cache_root(), "remote", hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16])


def _checkcache_root() -> None:
    """The cache can hold directories: else one line naming it, not a store error after the download."""
    where = "SMOLLM_CACHE=" if os.environ.get("SMOLLM_CACHE") else "the cache "
    root = nearest_existing(cache_root())
    if not os.path.isdir(root):
        raise RemoteError(f"{where}{root} is a file, not a directory; point SMOLLM_CACHE at a directory")


def fetch_weights(url: str, options: dict | None = None) -> str:
    """A local checkpoint directory (weights, config, tokenizer; no trainer state) of the run at url
    (its newest good checkpoint) or of the one checkpoint at url, kept in cache_dir(url) and reused
    while the store's checkpoint.json is the same."""
    _checkcache_root()
    store = connect(url, options, where="--model")
    try:
        if store.exists(CHECKPOINT_INFO):  # the URL of one checkpoint: <run>/checkpoints/<name>
            run_root, _, name = store.root.rsplit("/", 2)
            store, names = Store(store.fs, run_root, url), [name]
        else:
            names = _candidates(store, with_state=False)
            if not names:
                raise RemoteError(f"--model: {url} holds no finished checkpoint")
        root = cache_dir(url)
        cached = os.path.join(root, names[0], CHECKPOINT_INFO)
        if os.path.isfile(cached):
            with open(cached, "rb") as f:
                if f.read() == store.read(f"{CHECKPOINTS}/{names[0]}/{CHECKPOINT_INFO}"):
                    return os.path.dirname(cached)
        name = _newest_good(store, names, lambda n: os.path.join(root, n), with_state=False)
    except (RemoteError, CheckpointError):
        raise
    except Exception as e:  # noqa: BLE001
        raise RemoteError(f"--model: cannot read {url} ({describe(e)})") from None
    return os.path.join(root, name)
