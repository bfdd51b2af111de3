"""A remote store: one place under an fsspec URL (s3://bucket/prefix, gs://..., file:///...), opened
with options checked to hold no credential, and each transfer retried with back-off."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from smollm.errors import first_line
from smollm.files import atomic_path
from smollm.runs import CHECKPOINT_INFO, CHECKPOINTS, LATEST, STEP_NAME

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
    """The cause of a store's failure, on one line (a library's message that runs on for lines is
    joined, not cut after its first: "Parameter validation failed:" said nothing)."""
    text = " ".join(str(e).split())[:400] or type(e).__name__
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
        # A directory store (file://) keeps no directory the removal emptied (a pruned optimizer/ of a
        # sharded checkpoint); an object store has no directories to keep.
        protocol = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        parent = rel.rpartition("/")[0]
        while "file" in protocol and parent and os.path.isdir(self.path(parent)) and not os.listdir(self.path(parent)):
            os.rmdir(self.path(parent))
            parent = parent.rpartition("/")[0]

    def files(self, rel: str) -> dict[str, int]:
        """{path below rel: size} of every file under rel, in one listing (an object store's, not a
        file's, word on what it holds)."""
        base = self.path(rel).rstrip("/") + "/"
        try:
            found = self.fs.find(self.path(rel), detail=True)
        except FileNotFoundError:
            return {}
        return {p[len(base):]: int(info.get("size") or 0) for p, info in found.items()
                if p.startswith(base) and info.get("type", "file") == "file"}

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
    if not url.split("://", 1)[1].strip("/"):
        raise RemoteError(f"{where}: {url} names no place in the store; give a bucket and a prefix, like "
                          f"{protocol}://bucket/runs/name")
    if protocol in ("s3", "s3a"):
        _check_s3_options(options, f"{where}_options" if where == "log.remote" else "options")
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


# s3fs options whose value has one type; a wrong one failed deep in botocore without naming the option.
S3_OPTION_TYPES = {"endpoint_url": str, "anon": bool, "use_ssl": bool, "requester_pays": bool, "config_kwargs": dict,
                   "client_kwargs": dict, "s3_additional_kwargs": dict, "version_aware": bool}


def _check_s3_options(options: dict, where: str) -> None:
    for name, value in options.items():
        want = S3_OPTION_TYPES.get(name)
        if want is not None and not isinstance(value, want):
            kind = {str: "a string", bool: "true or false", dict: "a mapping"}[want]
            raise RemoteError(f"{where}.{name}: expected {kind}, got {value!r}")
    endpoint = options.get("endpoint_url")
    if endpoint is not None and not re.match(r"^https?://[^/]", endpoint):
        raise RemoteError(f"{where}.endpoint_url: {endpoint!r} is not an http(s):// URL (like http://127.0.0.1:9000)")


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
