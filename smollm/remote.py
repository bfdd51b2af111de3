"""A run's copy in a remote store, for machines that can vanish with their disk (spot instances):
any fsspec URL (s3://bucket/prefix, gs://..., file:///...; S3 through s3fs, the `remote` extra).

The copy has the run directory's own layout (smollm.runs) under the URL: the run's files
(config.yaml, metrics.jsonl, samples.*, loss.png, train.log) and checkpoints/step_N/ for each
checkpoint, whose checkpoint.json (the sha256 of its other files) is uploaded after them. The remote
checkpoints/latest is written after everything else, so a reader that follows it never finds a
checkpoint still being uploaded; a checkpoint without its checkpoint.json is not finished.

Uploader mirrors a local run from one background thread (training never waits on the network):
after each checkpoint, every checkpoint not yet there, the run's files, the trainer states the local
run keeps, then `latest`. Each transfer is retried with back-off; a store that stays unreachable is
one warning per checkpoint and the run goes on (the next pass uploads what is missing).
fetch_run() brings a run back for --resume; fetch_weights() the weights of its latest checkpoint
for generate.py and the app (cached).

Credentials come from where the store's own library looks (for S3: the environment, ~/.aws
profiles, an instance role), never from this project's config, which is saved with every checkpoint:
storage options that name a secret are refused.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from smollm.checkpoint import CheckpointError, list_checkpoints, verify_checkpoint
from smollm.errors import first_line
from smollm.files import atomic_dir, atomic_path, atomic_write_bytes, nearest_existing
from smollm.runs import CHECKPOINT_INFO, CHECKPOINTS, LATEST, RUN_FILES, STEP_NAME, TRAINER_STATE, Run

URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
SECRET_WORDS = ("key", "secret", "token", "password", "credential", "sas")  # in an option's name: refused
RETRIES = 4  # attempts per transfer: waits of BACKOFF, 2 x BACKOFF, 4 x BACKOFF seconds between them
BACKOFF = 2.0


class RemoteError(ValueError):
    """A remote store that cannot be used: one line naming the URL (or option) and the cause."""


def is_url(text: str) -> bool:
    return bool(URL.match(str(text)))


def check_options(options: dict, where: str = "log.remote_options") -> None:
    for name in options:
        if any(word in name.lower() for word in SECRET_WORDS):
            raise RemoteError(f"{where}.{name}: credentials are never put in a run's config (it is saved with "
                              f"every checkpoint); set them where the store's library reads them (for S3: "
                              f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an ~/.aws profile)")


def describe(e: BaseException) -> str:
    """The cause of a store's failure, in a few words."""
    text = first_line(e)
    if isinstance(e, PermissionError) or "AccessDenied" in text or "InvalidAccessKeyId" in text:
        return f"access denied: {text} (check the credentials: for S3 the environment or ~/.aws profiles)"
    if isinstance(e, FileNotFoundError) and "bucket" in text.lower():
        return f"no such bucket: {text}"
    return f"{type(e).__name__}: {text}"


@dataclass
class Store:
    """A place under one URL of an fsspec filesystem; paths relative to it use "/"."""

    fs: object
    root: str
    url: str

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def read(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def write(self, rel: str, data: bytes) -> None:
        self.fs.pipe_file(self.path(rel), data)

    def put(self, local: str, rel: str) -> None:
        self.fs.put_file(local, self.path(rel))

    def get(self, rel: str, local: str) -> None:
        """The remote file at local, written atomically."""
        with atomic_path(local) as tmp:
            self.fs.get_file(self.path(rel), tmp)

    def remove(self, rel: str) -> None:
        try:
            self.fs.rm_file(self.path(rel))
        except FileNotFoundError:
            pass

    def listdir(self, rel: str) -> list[str]:
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path(rel), detail=False))
        except FileNotFoundError:
            return []

    def checkpoints(self) -> list[tuple[int, str]]:
        """(step, name) of every finished checkpoint (its checkpoint.json is there), oldest first."""
        names = [n for n in self.listdir(CHECKPOINTS) if STEP_NAME.match(n)]
        done = [n for n in names if self.exists(f"{CHECKPOINTS}/{n}/{CHECKPOINT_INFO}")]
        return sorted((int(STEP_NAME.match(n).group(1)), n) for n in done)

    def latest(self) -> str | None:
        """The checkpoint the remote `latest` names, else the newest finished one, else None."""
        try:
            name = self.read(f"{CHECKPOINTS}/{LATEST}").decode().strip()
        except FileNotFoundError:
            name = None
        if name and self.exists(f"{CHECKPOINTS}/{name}/{CHECKPOINT_INFO}"):
            return name
        found = self.checkpoints()
        return found[-1][1] if found else None


def connect(url: str, options: dict | None = None, where: str = "log.remote") -> Store:
    """The Store at url. Options are fsspec's for the protocol (checked: no credentials); for S3 the
    endpoint may also come from AWS_ENDPOINT_URL (S3-compatible stores: MinIO, R2, ...)."""
    options = dict(options or {})
    check_options(options, f"{where}_options" if where == "log.remote" else "options")
    protocol = url.split("://", 1)[0].lower()
    if protocol in ("s3", "s3a"):
        if "endpoint_url" not in options and os.environ.get("AWS_ENDPOINT_URL"):
            options["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
        # Our own retries (RETRIES, BACKOFF) wrap each transfer: the client gives up soon on its own.
        options.setdefault("config_kwargs", {"connect_timeout": 5, "read_timeout": 60,
                                             "retries": {"max_attempts": 2}})
        options.setdefault("skip_instance_cache", True)
        options.setdefault("use_listings_cache", False)
    elif protocol in ("file", "local"):
        options.setdefault("auto_mkdir", True)  # object stores have no directories to make; a disk has
    try:
        import fsspec

        fs, root = fsspec.core.url_to_fs(url, **options)
    except ImportError as e:
        raise RemoteError(f"{where}: {url} needs a package for {protocol}:// ({first_line(e)}); install the "
                          f"`remote` extra: pip install -e '.[remote]'") from None
    except (ValueError, TypeError) as e:
        raise RemoteError(f"{where}: {url} is not a store fsspec can open ({first_line(e)})") from None
    return Store(fs, root.rstrip("/"), url)


def check_writable(store: Store, where: str = "log.remote") -> None:
    """Write and remove a small object: a wrong bucket, missing credentials or an unreachable store
    fail here, at start-up, as one line, not after the first checkpoint."""
    probe = f".smollm-probe-{os.getpid()}"
    try:
        store.write(probe, b"probe\n")
        store.remove(probe)
    except Exception as e:  # noqa: BLE001 -- every store has its own exceptions: all are this one line
        raise RemoteError(f"{where}: cannot write to {store.url} ({describe(e)})") from None


def retry(fn: Callable[[], object], retries: int | None = None, backoff: float | None = None):
    """fn(), tried again after a pause on failure (network errors); access denied and a missing file
    or bucket are not retried (waiting does not change them)."""
    retries, backoff = retries or RETRIES, BACKOFF if backoff is None else backoff
    for attempt in range(retries):
        try:
            return fn()
        except (PermissionError, FileNotFoundError):
            raise
        except Exception:  # noqa: BLE001
            if attempt == retries - 1:
                raise
            time.sleep(backoff * 2 ** attempt)


# ---------------------------------------------------------------------------- upload --

class Uploader:
    """Mirrors a local run directory to a Store from one background thread. sync() asks for a pass
    (after each checkpoint; passes asked for while one runs are merged into the next); close() waits,
    for a bounded time, until every pass asked for is done."""

    def __init__(self, run: Run, store: Store, keep_trainer_states: int,
                 warn: Callable[[str], None] | None = None):
        self.run, self.store, self.keep = run, store, keep_trainer_states
        self.warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
        self.uploaded: dict[str, bytes] = {}  # checkpoint name -> the checkpoint.json it was uploaded with
        self.error: str | None = None  # the cause of the last pass's failure, None once a pass succeeds
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
        return self.missing() if not done or self.error else []

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
        try:
            for name, info in self._local_checkpoints():
                if self.uploaded.get(name) != info:
                    self._upload_checkpoint(name, info)
            self._prune_trainer_states()
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

    def _upload_checkpoint(self, name: str, info: bytes) -> None:
        rel = f"{CHECKPOINTS}/{name}"
        try:
            there = retry(lambda: self.store.read(f"{rel}/{CHECKPOINT_INFO}"))
        except FileNotFoundError:
            there = None
        if there != info:
            if there is not None:  # another checkpoint of the same step (a resume from before it): unfinish it first
                retry(lambda: self.store.remove(f"{rel}/{CHECKPOINT_INFO}"))
            local = os.path.join(self.run.checkpoints, name)
            for f in sorted(os.listdir(local)):
                if f != CHECKPOINT_INFO:
                    self._put_unless_pruned(os.path.join(local, f), f"{rel}/{f}")
            retry(lambda: self.store.write(f"{rel}/{CHECKPOINT_INFO}", info))
        self.uploaded[name] = info

    def _put_unless_pruned(self, local: str, rel: str) -> None:
        """local to rel; nothing when local is an optimizer state the run pruned meanwhile (a newer
        checkpoint came while this one was on its way: the remote prunes it too)."""
        try:
            retry(lambda: self.store.put(local, rel))
        except FileNotFoundError:
            if os.path.exists(local) or os.path.basename(local) != TRAINER_STATE:
                raise

    def _prune_trainer_states(self) -> None:
        """The remote keeps the optimizer states of its newest keep_trainer_states checkpoints, as the
        local run does (smollm.checkpoint.save_checkpoint)."""
        with_state = [n for _, n in self.store.checkpoints() if self.store.exists(f"{CHECKPOINTS}/{n}/{TRAINER_STATE}")]
        for name in with_state[:-self.keep]:
            retry(lambda n=name: self.store.remove(f"{CHECKPOINTS}/{n}/{TRAINER_STATE}"))


def _read_local_latest(run: Run) -> str | None:
    try:
        with open(run.latest) as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------- download --

def _fetch_checkpoint(store: Store, name: str, dest: str, with_state: bool) -> None:
    """store's checkpoints/name into the local directory dest (atomically), checked against its
    checkpoint.json's sha256 (a CheckpointError naming the bad file)."""
    rel = f"{CHECKPOINTS}/{name}"
    with atomic_dir(dest, overwrite=True) as tmp:
        for f in store.listdir(rel):
            if f != TRAINER_STATE or with_state:
                retry(lambda f=f: store.fs.get_file(store.path(f"{rel}/{f}"), os.path.join(tmp, f)))
        verify_checkpoint(tmp, skip=() if with_state else (TRAINER_STATE,))


def _candidates(store: Store, with_state: bool) -> list[str]:
    """The remote latest checkpoint first, then the earlier finished ones, newest first."""
    latest = store.latest()
    if latest is None:
        return []
    step = int(STEP_NAME.match(latest).group(1))
    earlier = [n for s, n in reversed(store.checkpoints()) if s < step]
    names = [latest, *earlier]
    if with_state:
        names = [n for n in names if store.exists(f"{CHECKPOINTS}/{n}/{TRAINER_STATE}")]
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
    return dest


def cache_dir(url: str) -> str:
    """Where fetch_weights keeps the checkpoints of url: $SMOLLM_CACHE, else ~/.cache/smollm-triton."""
    return os.path.join(_cache_root(), "remote", hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16])


def _cache_root() -> str:
    return os.environ.get("SMOLLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "smollm-triton")


def _check_cache_root() -> None:
    """The cache can hold directories: else one line naming it, not a store error after the download."""
    where = "SMOLLM_CACHE=" if os.environ.get("SMOLLM_CACHE") else "the cache "
    root = nearest_existing(_cache_root())
    if not os.path.isdir(root):
        raise RemoteError(f"{where}{root} is a file, not a directory; point SMOLLM_CACHE at a directory")


def fetch_weights(url: str, options: dict | None = None) -> str:
    """A local checkpoint directory (weights, config, tokenizer; no trainer state) of the run at url
    (its newest good checkpoint) or of the one checkpoint at url, kept in cache_dir(url) and reused
    while the store's checkpoint.json is the same."""
    _check_cache_root()
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
