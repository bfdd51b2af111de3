"""How an error a user can cause reads: one line, naming the file, key or value (never a traceback).
Each command line prints error_line(e) of what it catches, and exits 2."""

from __future__ import annotations


def error_line(e: BaseException) -> str:
    """The exception's message on one line: a KeyError without its quotes, an OSError that names a
    file as "FILE: cause" (what the OS says, e.g. "Read-only file system")."""
    if isinstance(e, KeyError) and e.args:
        text = str(e.args[0])
    elif isinstance(e, OSError) and e.filename and str(e).startswith("[Errno"):  # the OS's own wording
        text = f"{e.filename}: {e.strerror}"
    else:
        text = str(e)
    return " ".join(text.split()) or type(e).__name__


def first_line(e: BaseException) -> str:
    """The first line of the exception's message (or its type's name): a cause quoted inside another
    sentence, where a library's message runs on for lines."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
