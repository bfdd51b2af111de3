"""Prepare token shards from a corpus: `python -m smollm.prepare --help`.

Sources: the Hugging Face dataset HuggingFaceTB/smollm-corpus (config cosmopedia-v2, column text),
streamed; local files (txt: one document per file; jsonl and parquet: one per row; UTF-8, or the run
stops naming the file and line); or the offline default, the Python standard library's own source
files. Documents are tokenized in batches across worker processes, each followed by <|endoftext|>,
and a hashed fraction of documents goes to the validation split.

Resumable: shards are committed one at a time (the train shard, plus the validation documents met
since the last commit as a validation shard of the same index), and meta.json records after each
commit how many source documents are in. A rerun skips those and continues; nothing is duplicated
or lost.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import multiprocessing as mp
import os
import sys
import sysconfig
import time
from collections import deque
from collections.abc import Iterator
from itertools import islice

import numpy as np

from smollm.data import SPLITS, read_meta, shard_name, write_shard
from smollm.errors import error_line
from smollm.files import atomic_write_json
from smollm.tokenize_worker import encode_batch, init_worker

HF_DATASET = "HuggingFaceTB/smollm-corpus"
HF_CONFIG = "cosmopedia-v2"


# ---------------------------------------------------------------- sources: (name, documents) --

def stdlib_files() -> tuple[str, list[str]]:
    """The standard library's UTF-8 .py files, sorted, without site-/dist-packages (their contents
    differ from machine to machine). A few test files are deliberately not UTF-8: left out."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for path in glob.glob(os.path.join(root, "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, root)
        if not {"site-packages", "dist-packages"} & set(rel.split(os.sep)) and _read_text(path) is not None:
            files.append(rel)
    return root, sorted(files)


def _read_text(path: str) -> str | None:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None  # a few stdlib test files are deliberately not UTF-8


def _decode(data: bytes, path: str, line: int | None = None) -> str:
    """`data` as UTF-8; invalid UTF-8 raises, naming the file, line and byte (the policy: local files
    must be UTF-8, nothing is dropped or replaced without a word)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        where = f"{line}:{e.start + 1}" if line is not None else str(data.count(b"\n", 0, e.start) + 1)
        raise ValueError(f"{path}:{where}: not valid UTF-8 (byte {data[e.start]:#04x}); re-encode the file as "
                         f"UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def iter_stdlib(skip: int = 0) -> Iterator[str]:
    root, files = stdlib_files()
    for rel in files[skip:]:
        yield _read_text(os.path.join(root, rel))


def expand_globs(patterns: list[str]) -> list[str]:
    files = []
    for pattern in patterns:
        matched = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matched:
            raise FileNotFoundError(f"source {pattern!r} matches no file")
        files += [m for m in matched if os.path.isfile(m)]
    for path in files:  # checked before anything starts, not when the run reaches the file
        if not path.endswith((".txt", ".jsonl", ".parquet")):
            raise ValueError(f"{path}: unsupported file type (txt, jsonl or parquet)")
    return files


def iter_local(files: list[str], column: str, skip: int = 0) -> Iterator[str]:
    seen = 0
    for path in files:
        if path.endswith(".txt"):
            with open(path, "rb") as f:
                docs = [_decode(f.read(), path)]
        elif path.endswith(".jsonl"):
            docs = _jsonl_column(path, column)
        elif path.endswith(".parquet"):
            docs = _parquet_column(path, column)
        else:
            raise ValueError(f"{path}: unsupported file type (txt, jsonl or parquet)")
        for doc in docs:
            if seen >= skip:
                yield doc
            seen += 1


def _jsonl_column(path: str, column: str) -> Iterator[str]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            line = _decode(raw, path, n)
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
            if column not in row:
                raise KeyError(f"{path}:{n}: no column {column!r} (columns: {sorted(row)})")
            yield row[column]


def _parquet_column(path: str, column: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if column not in pf.schema_arrow.names:
        raise KeyError(f"{path}: no column {column!r} (columns: {pf.schema_arrow.names})")
    for batch in pf.iter_batches(columns=[column], batch_size=1024):
        yield from batch.column(0).to_pylist()


def iter_hf(dataset: str, config: str | None, column: str, skip: int = 0) -> Iterator[str]:
    """Streams a Hugging Face dataset (a hub id, or a local dataset directory) without downloading it whole."""
    from datasets import load_dataset

    try:
        if not os.path.isdir(dataset):
            # One quick look first: unreachable, datasets retries with back-off for half a minute.
            from huggingface_hub import HfApi

            HfApi().dataset_info(dataset, timeout=10)
        ds = load_dataset(dataset, config, split="train", streaming=True)
    except Exception as e:
        raise OSError(f"cannot stream {dataset}/{config} from the Hugging Face Hub ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); offline, use --source stdlib or local files") from e
    if ds.column_names is not None and column not in ds.column_names:
        raise KeyError(f"{dataset}/{config}: no column {column!r} (columns: {ds.column_names})")
    yield from (row[column] for row in ds.skip(skip))


def open_source(source: list[str], column: str, skip: int) -> tuple[dict, Iterator[str]]:
    """(description for meta.json, document iterator starting after `skip` documents)."""
    if source == ["stdlib"]:
        root, files = stdlib_files()
        return {"kind": "stdlib", "root": root, "files": files}, iter_stdlib(skip)
    if len(source) == 1 and (source[0] == "hf" or source[0].startswith("hf:")):
        # hf -> the default corpus; hf:NAME or hf:NAME:CONFIG (NAME: a hub id or a local dataset directory)
        parts = source[0][3:].split(":") if source[0] != "hf" else [HF_DATASET, HF_CONFIG]
        dataset, config = parts[0], (parts[1] if len(parts) > 1 else None)
        return {"kind": "hf", "dataset": dataset, "config": config, "column": column}, \
            iter_hf(dataset, config, column, skip)
    files = expand_globs(source)
    return {"kind": "files", "files": [os.path.abspath(f) for f in files], "column": column}, \
        iter_local(files, column, skip)


# ----------------------------------------------------------------------------- tokenizing --

def _batched(docs: Iterator[str], max_docs: int, max_chars: int = 1 << 20) -> Iterator[list[str]]:
    """Batches of at most max_docs documents or about max_chars characters: documents range from a
    line to a megabyte, and batches of similar size keep the workers evenly loaded."""
    batch, chars = [], 0
    for doc in docs:
        if not isinstance(doc, str):
            raise TypeError(f"document {doc!r:.60} is not text")
        batch.append(doc)
        chars += len(doc)
        if len(batch) >= max_docs or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def tokenizer_fingerprint(tok) -> str:
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


def parse_count(text: str) -> int:
    """'1.2B', '500M', '10k' or a plain integer."""
    scale = {"k": 10 ** 3, "m": 10 ** 6, "b": 10 ** 9}
    t = str(text).strip().lower().replace("_", "")
    try:
        return int(float(t[:-1]) * scale[t[-1]]) if t and t[-1] in scale else int(t)
    except ValueError:
        raise ValueError(f"not a count: {text!r} (use e.g. 1.2B, 500M, 10k)") from None


# ------------------------------------------------------------------------------- prepare --

def prepare(source: list[str], out: str, tokenizer=None, tokenizer_name: str | None = None, column: str = "text",
            max_tokens: int | None = None, shard_tokens: int = 50_000_000, val_fraction: float = 0.01,
            workers: int | None = None, threads: int | None = None, batch_docs: int = 1024,
            max_commits: int | None = None, progress: bool = True) -> dict:
    """Tokenize `source` into shards under `out`; resumes a partial run there. Returns meta."""
    from smollm.tokenizer import load_tokenizer

    workers, threads = _pool_size(workers, threads)
    if (max_tokens is not None and max_tokens < 1) or shard_tokens < 1:
        raise ValueError(f"the token budget ({max_tokens}) and tokens per shard ({shard_tokens}) must be at least 1")
    tok = tokenizer if tokenizer is not None else load_tokenizer(tokenizer_name)
    fresh = _new_meta(tok, tokenizer_name, source, val_fraction, shard_tokens, max_tokens)
    made = _missing_dirs(out)
    started = False
    try:
        meta = _resume_or_start(out, fresh)
        if meta.get("complete"):
            return meta
        started = True
        description, docs = open_source(source, column, skip=meta["docs_done"])
        meta["source"], meta["max_tokens"] = description, max_tokens  # the budget may change on a resume
        shards = _Shards(out, meta, fresh["vocab_size"], fresh["eos_id"])
        # meta.json before the first shard: a run killed before its first commit resumes like any other.
        atomic_write_json(shards.meta_path, meta)
        budget_left = None if max_tokens is None else max_tokens - sum(meta["tokens"].values())
        t0 = time.perf_counter()
        stop, waited = _tokenize(docs, tok, shards, workers=workers, threads=threads, batch_docs=batch_docs,
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


def _new_meta(tok, tokenizer_name: str | None, source: list[str], val_fraction: float, shard_tokens: int,
              max_tokens: int | None = None) -> dict:
    """meta.json of a run that has not started. It records the tokenizer's identity (name, vocabulary
    fingerprint and size) so that a resumed run can refuse a different one: shards made with two
    tokenizers would mix ids of different meanings. Raises if `tok` cannot make uint16 shards whose
    documents are separated by <|endoftext|>."""
    vocab_size, eos_id = len(tok), tok.convert_tokens_to_ids("<|endoftext|>")
    if eos_id is None or tok.convert_ids_to_tokens(eos_id) != "<|endoftext|>":
        raise ValueError("tokenizer has no <|endoftext|> token to separate documents")
    if vocab_size > 65536:
        raise ValueError(f"tokenizer {tokenizer_name or tok.name_or_path!r} has {vocab_size} tokens, which does not "
                         f"fit uint16 shards (at most 65536)")
    return {"format": "smollm-triton token shards v1", "tokenizer": tokenizer_name or tok.name_or_path,
            "tokenizer_fingerprint": tokenizer_fingerprint(tok), "vocab_size": vocab_size, "eos_id": eos_id,
            "source_arg": source, "val_fraction": val_fraction, "shard_tokens": shard_tokens,
            "max_tokens": max_tokens, "docs_done": 0, "tokens": {s: 0 for s in SPLITS}, "documents": {s: 0 for s in SPLITS},
            "shards": [], "complete": False}


def _resume_or_start(out: str, fresh: dict) -> dict:
    """The meta of the run to continue in `out` (created if missing): its meta.json when a run there
    used the same tokenizer, source and --val-fraction (and, once complete, the same --tokens and
    --shard-tokens), else `fresh` for an empty directory or one holding only the `.tmp-*` files of a
    killed run. Anything else raises before a file is touched, so a wrong --out never mixes two
    datasets or overwrites one. Leftover `.tmp-*` files (half-written shards) are removed."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{out} exists and is not a directory; choose another --out")
    os.makedirs(out, exist_ok=True)
    names = os.listdir(out)
    leftovers = [n for n in names if n.startswith(".tmp-") and os.path.isfile(os.path.join(out, n))]
    if "meta.json" not in names:
        if set(names) - set(leftovers):
            raise ValueError(f"{out} is not empty and has no meta.json; choose an empty or new directory")
        _remove(out, leftovers)
        return fresh
    meta = read_meta(out)
    if (meta.get("tokenizer_fingerprint") != fresh["tokenizer_fingerprint"]
            or meta.get("vocab_size") != fresh["vocab_size"]):
        raise ValueError(f"{out} holds shards made with another tokenizer ({meta.get('tokenizer')!r}, vocab "
                         f"{meta.get('vocab_size')}); choose another --out. Nothing was changed.")
    if meta.get("source_arg") != fresh["source_arg"]:
        raise ValueError(f"{out} was prepared from {meta.get('source_arg')}, not {fresh['source_arg']}; choose "
                         f"another --out. Nothing was changed.")
    # A different --val-fraction would send documents of one run to two splits; a finished dataset is
    # only returned for the arguments that made it (metas written before these keys existed: not checked).
    keys = [("val_fraction", "--val-fraction")]
    if meta.get("complete"):
        keys += [("max_tokens", "--tokens"), ("shard_tokens", "--shard-tokens")]
    changed = [f"{flag} {_shown(meta[k])} (asked: {_shown(fresh[k])})" for k, flag in keys
               if k in meta and meta[k] != fresh[k]]
    if changed:
        state = "a finished dataset" if meta.get("complete") else "a partial dataset"
        raise ValueError(f"{out} holds {state} made with {', '.join(changed)}; rerun with its values "
                         f"{'to use' if meta.get('complete') else 'to resume'} it, or choose another --out for a "
                         f"new dataset. Nothing was changed.")
    _remove(out, leftovers)
    return meta


def _shown(value) -> str:
    return "all (the whole source)" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def _remove(out: str, names: list[str]) -> None:
    for n in names:
        try:
            os.unlink(os.path.join(out, n))
        except FileNotFoundError:
            pass


def _pool_size(workers: int | None, threads: int | None) -> tuple[int, int]:
    """(processes, encoding threads per process), defaults filled in from the core count."""
    cores = os.cpu_count() or 1
    # Two encoding threads per process: the part of a batch that holds the GIL (lists of ids to
    # numpy) in one thread overlaps the other's encoding, and processes add the rest of the cores.
    workers = max(1, cores // 2) if workers is None else workers
    threads = max(1, cores // max(workers, 1)) if threads is None else threads
    if workers < 1 or threads < 1:
        raise ValueError(f"workers ({workers}) and threads ({threads}) must be at least 1")
    return workers, threads


class _Shards:
    """The documents met since the last commit, per split, and the commit that writes them under
    `out`. A commit is the unit of resuming: its shards are written first and meta.json last (the
    commit point), so a run killed at any moment resumes from the last complete commit."""

    def __init__(self, out: str, meta: dict, vocab_size: int, eos_id: int):
        self.out, self.meta, self.vocab_size, self.eos_id = out, meta, vocab_size, eos_id
        self.meta_path = os.path.join(out, "meta.json")
        self.commits = len({s["index"] for s in meta["shards"]})  # train and val shards share an index
        self.buffers = {s: [] for s in SPLITS}  # per split: each document's (n,) uint16 ids, then (1,) eos
        self.counts = {s: 0 for s in SPLITS}  # tokens in buffers[split]
        self.doc_counts = {s: 0 for s in SPLITS}
        self.pending_docs = 0  # source documents consumed since the last commit, blank ones included
        self._eos = np.array([eos_id], dtype=np.uint16)  # (1,)

    def add(self, split: str, ids: np.ndarray) -> None:
        """Buffers one document's ids (n,) and <|endoftext|> for `split`."""
        self.pending_docs += 1
        self.buffers[split] += [ids, self._eos]
        self.counts[split] += len(ids) + 1
        self.doc_counts[split] += 1

    def add_blank(self) -> None:
        """A blank document: counted as consumed, so a resumed run skips it, but nothing to write."""
        self.pending_docs += 1

    def commit(self) -> None:
        """Writes the buffered documents as shards of index `commits` and records them in meta.json."""
        meta = self.meta
        for split in SPLITS:
            if self.counts[split]:
                name = shard_name(split, self.commits)
                write_shard(os.path.join(self.out, name), np.concatenate(self.buffers[split]), self.vocab_size,
                            self.eos_id)
                meta["shards"].append({"file": name, "split": split, "index": self.commits,
                                       "tokens": self.counts[split], "documents": self.doc_counts[split]})
                meta["tokens"][split] += self.counts[split]
                meta["documents"][split] += self.doc_counts[split]
            self.buffers[split].clear()
            self.counts[split] = self.doc_counts[split] = 0
        meta["docs_done"] += self.pending_docs
        self.pending_docs = 0
        self.commits += 1
        atomic_write_json(self.meta_path, meta)  # the commit point


def _tokenize(docs: Iterator[str], tok, shards: _Shards, *, workers: int, threads: int, batch_docs: int,
              val_fraction: float, shard_tokens: int, budget_left: int | None, max_commits: int | None,
              progress: bool, t0: float) -> tuple[str | None, float]:
    """Encodes `docs` in `workers` processes and adds them to `shards`, committing each time the train
    split holds a shard's worth of tokens. Stops at the end of the source (None), once `budget_left`
    tokens are in ("budget"), or right after commit number `max_commits` ("interrupted": lets the
    tests stop a run as a kill after a commit would). The progress bar's rates count from `t0`, the
    run's start. Returns (the reason it stopped, seconds the main process spent waiting for the
    workers)."""
    from tqdm import tqdm

    # fork starts workers in milliseconds (spawn and forkserver re-import the caller's __main__, often
    # torch, in every worker); the workers' threads are started after the fork (see init_worker).
    ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
    # In a log file (stderr not a terminal) a bar is one endless line of carriage returns: a plain
    # line per shard instead.
    plain = progress and not sys.stderr.isatty()
    bar = tqdm(desc=f"tokenizing -> {shards.out}", unit=" tok", unit_scale=True, mininterval=1.0,
               disable=not progress or plain)
    seen_docs, seen_tokens, stop, waited = 0, 0, None, 0.0
    pool = ctx.Pool(workers, initializer=init_worker, initargs=(tok.backend_tokenizer.to_str(), threads))
    in_flight: deque = deque()
    encoded = _encode_ahead(pool, _batched(docs, batch_docs), val_fraction, ahead=2 * workers, in_flight=in_flight)
    try:
        for (all_ids, lengths, splits), wait in encoded:
            waited += wait
            # all_ids: (sum of lengths,) uint16, the batch's documents end to end; lengths, splits: (docs,)
            for end, n, which in zip(np.cumsum(lengths).tolist(), lengths.tolist(), splits.tolist()):
                seen_docs += 1
                if which < 0:
                    shards.add_blank()
                    continue
                shards.add(SPLITS[which], all_ids[end - n:end])
                seen_tokens += n + 1
                bar.update(n + 1)
                if shards.counts["train"] >= shard_tokens:
                    shards.commit()
                    if plain:
                        rate = seen_tokens / max(time.perf_counter() - t0, 1e-9)
                        print(f"tokenizing -> {shards.out}: shard {shards.commits}, {seen_tokens:,} tokens "
                              f"({rate:,.0f} tokens/s)", file=sys.stderr, flush=True)
                    if max_commits is not None and shards.commits >= max_commits:
                        stop = "interrupted"
                        break
                if budget_left is not None and seen_tokens >= budget_left:
                    stop = "budget"
                    break
            elapsed = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(docs_per_s=f"{seen_docs / elapsed:,.0f}", tok_per_s=f"{seen_tokens / elapsed:,.0f}")
            if stop is not None:
                break
    finally:
        encoded.close()  # submits nothing more
        _stop_pool(pool, in_flight)
        bar.close()
    return stop, waited


def _encode_ahead(pool, batches: Iterator[list[str]], val_fraction: float, ahead: int,
                  in_flight: deque) -> Iterator[tuple[tuple[np.ndarray, np.ndarray, np.ndarray], float]]:
    """encode_batch's result for each batch, in order, with the seconds spent waiting for it. `ahead`
    batches are in flight at a time: enough to keep every worker busy, few enough that the corpus
    never sits in memory. `in_flight` (the caller's, empty) holds the batches submitted and not yet
    taken, for _stop_pool to wait for."""
    in_flight.extend(pool.apply_async(encode_batch, (batch, val_fraction)) for batch in islice(batches, ahead))
    while in_flight:
        t_wait = time.perf_counter()
        result = in_flight[0].get()
        in_flight.popleft()
        waited = time.perf_counter() - t_wait
        batch = next(batches, None)
        if batch is not None:
            in_flight.append(pool.apply_async(encode_batch, (batch, val_fraction)))
        yield result, waited


def _stop_pool(pool, in_flight: deque, patience: float = 120.0) -> None:
    """Stops the workers without pool.terminate() while one may be mid-result: a worker killed while
    writing its result to the pool's pipe leaves half a message there, and terminate() then waits
    for the rest of it for good (a known multiprocessing hazard; seen as a prepare stuck at 0% CPU).
    Waits for the batches still in flight (at most 2 per worker), then close() lets each worker take
    a sentinel and exit, and join() waits for them. Only if a result never comes (a worker died
    mid-batch: killed from outside) does it fall back to terminate(), when the others are idle."""
    deadline = time.monotonic() + patience
    for result in in_flight:
        result.wait(max(0.0, deadline - time.monotonic()))
    if all(result.ready() for result in in_flight):
        pool.close()
        pool.join()
    else:
        pool.terminate()


def _finish(shards: _Shards, source: list[str], t0: float, waited: float) -> dict:
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


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block: main() prints it
        raise _UsageError(f"{message} (see --help)")


def _one_line(e: BaseException) -> str:
    known = (ValueError, KeyError, OSError, TypeError, RuntimeError, _UsageError)
    return error_line(e) if isinstance(e, known) else f"{type(e).__name__}: {error_line(e)}"


def main(argv=None) -> int:
    """The command line. Every error is one line on stderr and exit code 2 (no traceback); an
    interrupted run says how to resume and exits with 130."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("prepare: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:
        print(f"prepare: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _main(argv) -> int:
    p = _Parser(prog="python -m smollm.prepare",
                description="Tokenize a corpus into uint16 token shards (train + val).")
    p.add_argument("--source", nargs="+", default=["stdlib"],
                   help="'stdlib' (offline default: the Python standard library's sources), 'hf' "
                        f"(= hf:{HF_DATASET}:{HF_CONFIG}, streamed), hf:NAME[:CONFIG], or local files/globs "
                        "(txt, jsonl, parquet)")
    p.add_argument("--out", required=True, help="dataset directory (created; a partial one is resumed)")
    p.add_argument("--tokenizer", default=None, help="tokenizer path or hub id (default: resolved as in the README)")
    p.add_argument("--column", default="text", help="text column of jsonl/parquet/hf sources")
    p.add_argument("--tokens", default=None, help="token budget, e.g. 1.2B (default: the whole source)")
    p.add_argument("--shard-tokens", default="50M", help="tokens per train shard (default 50M)")
    p.add_argument("--val-fraction", type=float, default=0.01, help="fraction of documents held out (default 0.01)")
    p.add_argument("--workers", type=int, default=None,
                   help="tokenizer processes (default: cores/2)")
    p.add_argument("--threads", type=int, default=None, help="encoding threads per process (default: cores/workers)")
    args = p.parse_args(argv)
    if not 0 <= args.val_fraction < 1:
        p.error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    for flag, value in (("--workers", args.workers), ("--threads", args.threads)):
        if value is not None and value < 1:
            p.error(f"{flag} must be at least 1, got {value}")
    counts = {}
    for flag, value in (("--tokens", args.tokens), ("--shard-tokens", args.shard_tokens)):
        if value is not None:
            try:
                counts[flag] = parse_count(value)
            except ValueError as e:
                p.error(f"{flag}: {e}")
            if counts[flag] < 1:
                p.error(f"{flag} must be at least 1, got {value!r}")
    meta = prepare(args.source, args.out, tokenizer_name=args.tokenizer, column=args.column,
                   max_tokens=counts.get("--tokens"), shard_tokens=counts["--shard-tokens"],
                   val_fraction=args.val_fraction, workers=args.workers, threads=args.threads)
    print(f"{args.out}: {meta['tokens']['train']:,} train tokens ({meta['documents']['train']:,} documents), "
          f"{meta['tokens']['val']:,} val tokens ({meta['documents']['val']:,} documents), "
          f"{len(meta['shards'])} shards")
    # The split is by each document's hash: a small corpus may draw no validation document at all.
    if meta["val_fraction"] > 0 and not meta["documents"]["val"]:
        print(f"note: no validation documents at --val-fraction {meta['val_fraction']} (each document is one with "
              f"that chance); train.py will run without a validation loss: raise --val-fraction for a corpus "
              f"of {meta['documents']['train']:,} documents")
    # The text policy, said where the counts are (nothing is dropped or replaced without a word).
    print("text: read as UTF-8; a local file with invalid UTF-8 stops the run, naming file and line"
          + ("; the standard library's few deliberately non-UTF-8 test files are left out" if "stdlib" in args.source
             else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
