"""Prepare token shards from a corpus: `python -m smollm.prepare --help` (the command:
smollm/cli/prepare.py).

Sources: the Hugging Face dataset HuggingFaceTB/smollm-corpus (config cosmopedia-v2, column text),
streamed; local files (txt: one document per file; jsonl and parquet: one per row; UTF-8, or the run
stops naming the file and line); or the offline default, the Python standard library's own source
files. Documents are tokenized in batches across worker processes, each followed by <|endoftext|>,
and a hashed fraction of documents goes to the validation split.

Resumable: shards are committed one at a time (the train shard, plus the validation documents met
since the last commit as a validation shard of the same index), and meta.json records after each
commit how many source documents are in. A rerun skips those and continues; nothing is duplicated
or lost.

Modules: sources.py (reading corpora), shards.py (meta.json and the shard writer), pool.py (the
tokenizing pool), worker.py (what the worker processes run), run.py (prepare() itself: resume or
start, finish, undo), counts.py (parse_count).

This module imports none of its submodules: each name below is loaded from its module on first use.
A spawned worker imports smollm.prepare.worker, and so this module first; importing run.py here would
give every worker torch (through smollm.data) and the rest. The command's --help stays fast for the
same reason. The submodules import each other directly, never this module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_PUBLIC = {  # name -> the module of this package that defines it
    "prepare": "run",
    "parse_count": "counts",
    "tokenizer_fingerprint": "shards",
    "stdlib_files": "sources",
    "iter_stdlib": "sources",
    "HF_DATASET": "sources",
    "HF_CONFIG": "sources",
}
__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:
    from smollm.prepare.counts import parse_count
    from smollm.prepare.run import prepare
    from smollm.prepare.shards import tokenizer_fingerprint
    from smollm.prepare.sources import HF_CONFIG, HF_DATASET, iter_stdlib, stdlib_files


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    globals()[name] = value  # loaded once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
