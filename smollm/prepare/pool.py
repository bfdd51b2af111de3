"""The tokenizing pool: documents in batches to worker processes (smollm/prepare/worker.py), their
ids back in order into the shard writer, and a stop that never leaves a worker mid-result."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from itertools import islice

import numpy as np

from smollm.data import SPLITS
from smollm.prepare.shards import Shards
from smollm.prepare.worker import encode_batch, init_worker


def pool_size(workers: int | None, threads: int | None) -> tuple[int, int]:
    """(processes, encoding threads per process), defaults filled in from the core count."""
    cores = os.cpu_count() or 1
    # Two encoding threads per process: the part of a batch that holds the GIL (lists of ids to
    # numpy) in one thread overlaps the other's encoding, and processes add the rest of the cores.
    workers = max(1, cores // 2) if workers is None else workers
    threads = max(1, cores // max(workers, 1)) if threads is None else threads
    if workers < 1 or threads < 1:
        raise ValueError(f"workers ({workers}) and threads ({threads}) must be at least 1")
    return workers, threads


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


def tokenize_docs(docs: Iterator[str], tok, shards: Shards, *, workers: int, threads: int, batch_docs: int,
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
    seen_docs, seen_tokens, stop, waited, patience = 0, 0, None, 0.0, 120.0
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
    except (WorkerDied, KeyboardInterrupt):
        patience = 5.0  # a lost batch never comes, and Ctrl-C means now: wait briefly for the others
        raise
    finally:
        encoded.close()  # submits nothing more
        _stop_pool(pool, in_flight, patience)
        bar.close()
    return stop, waited


def _encode_ahead(pool, batches: Iterator[list[str]], val_fraction: float, ahead: int,
                  in_flight: deque) -> Iterator[tuple[tuple[np.ndarray, np.ndarray, np.ndarray], float]]:
    """encode_batch's result for each batch, in order, with the seconds spent waiting for it. `ahead`
    batches are in flight at a time: enough to keep every worker busy, few enough that the corpus
    never sits in memory. `in_flight` (the caller's, empty) holds the batches submitted and not yet
    taken, for _stop_pool to wait for."""
    in_flight.extend(pool.apply_async(encode_batch, (batch, val_fraction)) for batch in islice(batches, ahead))
    workers = _worker_pids(pool)
    while in_flight:
        t_wait = time.perf_counter()
        while not in_flight[0].ready():  # polled: a worker that died never sends its batch back
            in_flight[0].wait(POLL)
            if not in_flight[0].ready() and (gone := workers - _worker_pids(pool)):
                raise WorkerDied(f"a tokenizer worker (pid {min(gone)}) died with a batch in flight (killed from "
                                 f"outside, or out of memory); the shards committed so far are kept: run the same "
                                 f"command again to resume")
        result = in_flight[0].get()
        in_flight.popleft()
        waited = time.perf_counter() - t_wait
        batch = next(batches, None)
        if batch is not None:
            in_flight.append(pool.apply_async(encode_batch, (batch, val_fraction)))
        yield result, waited


POLL = 0.5  # seconds between looks at the workers while a batch is awaited


class WorkerDied(RuntimeError):
    """A pool worker exited while the run waited for its batch (the pool replaces the process, not the batch)."""


def _worker_pids(pool) -> set[int]:
    # The pool's own list of its processes: a replaced one is a worker that died (they never exit otherwise).
    return {p.pid for p in pool._pool}


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
