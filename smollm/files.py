"""Files written so that nothing is ever half there: every file and directory the project writes
(shards, manifests, checkpoints, exports, samples, plots, bench results) goes through here. A file
or directory is built under a temporary name beside its destination, fsynced, then renamed over
it, so a reader (or a crash) sees the old one or the whole new one, never a mix.

Also the one test of whether a string names a Hugging Face hub repository rather than a path."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(name: str) -> bool:
    """"owner/repo" that is not a local path: no leading . / ~, no .gguf/.json ending, not on disk."""
    name = os.fspath(name)
    return (bool(_HUB_ID.match(name)) and not name.endswith((".gguf", ".json"))
            and not os.path.exists(name))


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ""):
    """Yields a temporary file name beside `path` to write (by any means: a figure's savefig, a
    library's save); on success it is fsynced, made world-readable and renamed to `path`; on
    failure it is removed and `path` is left as it was."""
    path = os.path.abspath(os.fspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=os.path.dirname(path))
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; what we write is for everyone to read
        _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str, chunks) -> None:
    """Write an iterable of bytes to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, [text.encode()])


def atomic_write_json(path: str, obj) -> None:
    atomic_write_bytes(path, [json.dumps(obj, indent=1).encode() + b"\n"])


def read_jsonl(path: str) -> list[dict]:
    """One JSON object per line (empty when the file does not exist yet)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@contextlib.contextmanager
def atomic_dir(out_dir: str, overwrite: bool = False):
    """Yields a temporary directory beside `out_dir` to fill; on success its files are fsynced and it
    replaces `out_dir` (which must not exist unless overwrite); on failure it is removed."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite to replace it")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(out_dir) + "-", dir=parent)
    try:
        yield tmp
        for name in os.listdir(tmp):
            if os.path.isfile(os.path.join(tmp, name)):
                _fsync_file(os.path.join(tmp, name))
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700 directories
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=".old-", dir=parent)
            os.replace(out_dir, os.path.join(old, "x"))
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
