"""Files written so that nothing is ever half there: every file and directory the project writes
(shards, manifests, checkpoints, exports, samples, plots, bench results) goes through here. A file
or directory is built under a temporary name beside its destination, fsynced, then renamed over
it, so a reader (or a crash) sees the old one or the whole new one, never a mix.

Also the one test of whether a string names a Hugging Face hub repository rather than a path, what a
model or tokenizer source that names neither says (SourceNotFound), and where the project keeps what it
can rebuild (cache_root)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile

from smollm.errors import first_line

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LOCAL_SUFFIXES = (".gguf", ".safetensors", ".json")  # files of weights or tokenizers, never a hub repository
RUNS = "runs"  # where runs go by default (log.out_dir: runs/<name>), so runs/x is a path


def looks_like_path(name: str) -> bool:
    """A name that can only mean a local path: it starts with / ./ ../ or ~, ends in .gguf,
    .safetensors or .json, or its first component is runs or a directory that exists here (models/x
    where models/ does: a typo below it is not a hub id)."""
    name = os.fspath(name).replace(os.sep, "/")
    if name.startswith(("/", "~", "./", "../")) or name in (".", "..") or name.endswith(LOCAL_SUFFIXES):
        return True
    first, sep, _ = name.partition("/")
    return bool(sep) and (first == RUNS or os.path.isdir(first))


def is_hub_id(name: str) -> bool:
    """"owner/repo" that is not a local path (looks_like_path) and not on disk."""
    name = os.fspath(name)
    return bool(_HUB_ID.match(name)) and not looks_like_path(name) and not os.path.exists(name)


class SourceNotFound(FileNotFoundError):
    """A model or tokenizer source that names nothing on disk, nor, where it could be a hub id, on the
    Hub: one line that says first that no such path exists here, naming it, then what the Hub said
    (a mistyped runs/tiny is a typo, not a network problem). `label` names what it was given as
    (model, tokenizer; a command line puts its flag there: describe("--model"))."""

    def __init__(self, source: str, hub_said: str | None = None, label: str = "model"):
        super().__init__(errno.ENOENT, os.strerror(errno.ENOENT), source)
        self.source, self.hub_said, self.label = source, hub_said, label

    def describe(self, label: str) -> str:
        head = f"{label} {self.source}: no such file or directory"
        if self.hub_said is not None:
            return f"{head} here; as a Hub id it failed: {self.hub_said}"
        if looks_like_path(self.source):
            return head
        return f"{head} here, and not a Hub id (those read owner/name, e.g. HuggingFaceTB/SmolLM2-135M)"

    def __str__(self) -> str:
        return self.describe(self.label)


def cache_root() -> str:
    """What the project keeps to reuse and can always rebuild (fetched checkpoints, converted
    tokenizers): $SMOLLM_CACHE, else ~/.cache/smollm-triton."""
    return os.environ.get("SMOLLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "smollm-triton")


def nearest_existing(path: str) -> str:
    """The longest leading part of path that exists (a dangling symlink counts): where a makedirs would
    start, and what it would trip on when that is not a directory."""
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def hub_failure(e: BaseException) -> str:
    """What the Hub said, in one line: the exception's type and the first line of its message."""
    return f"{type(e).__name__}: {first_line(e)}"


# What a write that fails for a reason of the disk says: one sentence, the destination and the cause.
_CAUSES = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "disk quota exceeded",
           errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "permission denied"}
# Libraries that write with their own code (safetensors, torch.save to a path) raise their own
# exception types; the cause is in the message text or in the chained OSError.
_CAUSE_TEXTS = {errno.ENOSPC: ("No space left on device", "os error 28"), errno.EDQUOT: ("Disk quota exceeded",),
                errno.EROFS: ("Read-only file system", "os error 30"), errno.EACCES: ("Permission denied",)}


class WriteError(OSError):
    """A file or directory of the project could not be written because of the disk: full (ENOSPC,
    EDQUOT), read-only (EROFS) or not ours to write (EACCES, EPERM). errno and filename (the
    destination) are set; str() is one sentence; the temporary is removed and the previous file or
    directory at the destination is left as it was."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror} (the previous version, if any, is unchanged)"


def _disk_errno(exc: BaseException, directory: str) -> int | None:
    """The errno of a failed write when the disk caused it (ENOSPC, EROFS, EACCES, ...), else None."""
    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _CAUSES:
            return e.errno
        text = str(e)
        for code, needles in _CAUSE_TEXTS.items():
            if any(n in text for n in needles):
                return code
        e = e.__cause__ or e.__context__
    if isinstance(exc, (OSError, RuntimeError)):  # torch.save to a path says only "file write failed"
        try:
            if shutil.disk_usage(directory).free < 1 << 20:
                return errno.ENOSPC
        except OSError:
            pass
    return None


def _as_write_error(exc: Exception, path: str, directory: str) -> Exception:
    if isinstance(exc, WriteError):
        return exc
    code = _disk_errno(exc, directory)
    return exc if code is None else WriteError(code, _CAUSES[code], path)


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
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=os.path.dirname(path))
        os.close(fd)
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; what we write is for everyone to read
        _fsync_file(tmp)
        os.replace(tmp, path)
    except Exception as e:
        err = _as_write_error(e, path, os.path.dirname(path))
        if err is e:
            raise
        raise err from e
    finally:
        if tmp is not None and os.path.exists(tmp):
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
    """One JSON object per line (empty when the file does not exist yet). A torn last line (half
    written when the process was killed) is dropped with a warning; a bad line before it is an
    error (ValueError) naming the file and the line."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    records = []
    for i, (n, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError as e:
            if i == len(lines) - 1:
                import sys

                print(f"warning: {path}: dropped a torn last line (line {n}, {len(line.rstrip())} characters, "
                      f"not JSON: a write cut short)", file=sys.stderr, flush=True)
            else:
                raise ValueError(f"{path}: line {n} is not JSON ({e}); fix or remove that line") from None
    return records


@contextlib.contextmanager
def atomic_dir(out_dir: str, overwrite: bool = False):
    """Yields a temporary directory beside `out_dir` to fill; on success its files are fsynced and it
    replaces `out_dir` (which must not exist unless overwrite); on failure it is removed."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite to replace it")
    parent = os.path.dirname(out_dir)
    tmp = None
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(out_dir) + "-", dir=parent)
        yield tmp
        # Every file world-readable like the rest (libraries' writers and mkstemp may make 0600 ones).
        for root, dirs, names in os.walk(tmp):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
            for name in names:
                if os.path.isfile(os.path.join(root, name)) and not os.path.islink(os.path.join(root, name)):
                    os.chmod(os.path.join(root, name), 0o644)
                    _fsync_file(os.path.join(root, name))
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700 directories
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=".old-", dir=parent)
            os.replace(out_dir, os.path.join(old, "x"))
            try:
                os.replace(tmp, out_dir)
            except OSError:
                os.replace(os.path.join(old, "x"), out_dir)  # the previous one back in place
                os.rmdir(old)
                raise
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
    except Exception as e:
        err = _as_write_error(e, out_dir, parent)
        if err is e:
            raise
        raise err from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
