"""One run of prepare: resume or start the dataset in `out`, tokenize the source into it, finish it,
and after a failure that committed nothing, leave `out` as it was."""

from __future__ import annotations

import json
import os
import time

from smollm.files import atomic_write_json
from smollm.prepare.pool import pool_size, tokenize_docs
from smollm.prepare.shards import Shards, new_meta, resume_or_start
from smollm.prepare.sources import open_source


def prepare(source: list[str], out: str, tokenizer=None, tokenizer_name: str | None = None, column: str = "text",
            max_tokens: int | None = None, shard_tokens: int = 50_000_000, val_fraction: float = 0.01,
            workers: int | None = None, threads: int | None = None, batch_docs: int = 1024,
            max_commits: int | None = None, progress: bool = True) -> dict:
    """Tokenize `source` into shards under `out`; resumes a partial run there. Returns meta."""
    from smollm.tokenizer import load_tokenizer

    workers, threads = pool_size(workers, threads)
    if (max_tokens is not None and max_tokens < 1) or shard_tokens < 1:
        raise ValueError(f"the token budget ({max_tokens}) and tokens per shard ({shard_tokens}) must be at least 1")
    tok = tokenizer if tokenizer is not None else load_tokenizer(tokenizer_name)
    fresh = new_meta(tok, tokenizer_name, source, val_fraction, shard_tokens, max_tokens)
    made = _missing_dirs(out)
    started = False
    try:
        meta = resume_or_start(out, fresh)
        if meta.get("complete"):
            return meta
        started = True
        description, docs = open_source(source, column, skip=meta["docs_done"])
        meta["source"], meta["max_tokens"] = description, max_tokens  # the budget may change on a resume
        shards = Shards(out, meta, fresh["vocab_size"], fresh["eos_id"])
        # meta.json before the first shard: a run killed before its first commit resumes like any other.
        atomic_write_json(shards.meta_path, meta)
        budget_left = None if max_tokens is None else max_tokens - sum(meta["tokens"].values())
        t0 = time.perf_counter()
        stop, waited = tokenize_docs(docs, tok, shards, workers=workers, threads=threads, batch_docs=batch_docs,
                                     val_fraction=val_fraction, shard_tokens=shard_tokens, budget_left=budget_left,
                                     max_commits=max_commits, progress=progress, t0=t0)
        if stop == "interrupted":
            return meta
        return _finish(shards, source, t0, waited)
    except BaseException:
        _undo_empty_start(out, made, started)
        raise


def _missing_dirs(path: str) -> list[str]:
    """The directories that creating `path` will make, deepest first."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _undo_empty_start(out: str, made: list[str], started: bool) -> None:
    """After a failed run: when nothing was committed (no shard in meta.json), removes the meta.json
    this run wrote, and then the directories it created if they are empty, so that the same --out can
    be used once the cause is fixed. A dataset with shards is kept as it is, to be resumed."""
    meta_path = os.path.join(out, "meta.json")
    if started and os.path.isfile(meta_path):
        try:
            with open(meta_path) as f:
                committed = bool(json.load(f).get("shards"))
        except (OSError, ValueError):
            committed = True  # cannot tell: keep it
        if not committed:
            os.unlink(meta_path)
    for d in made:
        try:
            os.rmdir(d)  # only when empty
        except FileNotFoundError:
            continue
        except OSError:
            break


def _finish(shards: Shards, source: list[str], t0: float, waited: float) -> dict:
    """Commits what is left and marks the run complete in meta.json, which a rerun then returns as it
    is. A source without a document to train on raises instead; when it yielded no document at all,
    prepare() removes meta.json again (and `out` if it made it), so that the same --out can be used
    once the source is fixed."""
    if shards.pending_docs:
        shards.commit()
    meta, meta_path = shards.meta, shards.meta_path
    if meta["documents"]["train"] + meta["documents"]["val"] == 0:
        raise ValueError(f"source {source} has no documents with text")
    if meta["tokens"]["train"] == 0:
        raise ValueError(f"source {source}: every document went to the validation split; lower --val-fraction")
    meta["complete"] = True
    meta["seconds"] = round(time.perf_counter() - t0, 2)
    # What the main process itself spent (reading the source, writing shards): the ceiling on how far
    # more workers can scale this run is seconds / main_busy_seconds.
    meta["main_busy_seconds"] = round(meta["seconds"] - waited, 2)
    atomic_write_json(meta_path, meta)
    return meta
