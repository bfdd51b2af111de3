"""What runs in prepare's worker processes. It imports only numpy and tokenizers, not the rest of the
package (torch, through smollm.data): a spawned worker imports this module, and with it the package's
__init__, which imports nothing until a name is used."""

import hashlib
import itertools
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def is_val(doc: str, val_fraction: float) -> bool:
    """Hash of the text, so the split does not depend on document order or worker count."""
    h = int.from_bytes(hashlib.blake2b(doc.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return h / 2 ** 64 < val_fraction


_worker_tok = None
_worker_threads: ThreadPoolExecutor | None = None


def init_worker(tokenizer_json: str, threads: int):
    """Each worker encodes on `threads` Python threads (the tokenizer releases the GIL while it
    encodes), not on the tokenizer's own Rust thread pool: that pool does not survive a fork, and a
    child forked from a parent that has already encoded in parallel (any batched `tok(...)` call)
    silently falls back to one thread. Plain threads started here work whatever the parent did."""
    global _worker_tok, _worker_threads
    # Ctrl-C reaches the whole process group: the main process stops the workers (pool._stop_pool),
    # which finish their batch; one killed mid-batch by the signal would leave its result missing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one Rust thread per call; we bring the threads
    from tokenizers import Tokenizer

    _worker_tok = Tokenizer.from_str(tokenizer_json)
    _worker_threads = ThreadPoolExecutor(threads) if threads > 1 else None


def _encode(texts: list[str]) -> list[list[int]]:
    encode = getattr(_worker_tok, "encode_batch_fast", _worker_tok.encode_batch)  # fast: no offsets
    return [e.ids for e in encode(texts, add_special_tokens=False)]


def _split_by_chars(texts: list[str], parts: int) -> list[list[str]]:
    """Contiguous slices of about equal characters (documents range from a line to a megabyte)."""
    total, bounds, acc = sum(map(len, texts)), [0], 0
    for i, t in enumerate(texts):
        acc += len(t)
        if len(bounds) < parts and acc >= total * len(bounds) / parts:
            bounds.append(i + 1)
    bounds.append(len(texts))
    return [texts[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def encode_batch(texts: list[str], val_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(all ids concatenated, per-document lengths, per-document split: 0 train, 1 val, -1 blank)."""
    if _worker_threads is None or len(texts) < 2:
        id_lists = _encode(texts)
    else:
        parts = _split_by_chars(texts, 4 * _worker_threads._max_workers)  # 4 each: the threads stay busy
        id_lists = list(itertools.chain.from_iterable(_worker_threads.map(_encode, parts)))
    lengths = np.array([len(ids) for ids in id_lists], dtype=np.int64)
    ids = np.fromiter(itertools.chain.from_iterable(id_lists), dtype=np.uint16, count=int(lengths.sum()))
    split = np.array([-1 if not t.strip() else int(is_val(t, val_fraction)) for t in texts], dtype=np.int8)
    return ids, lengths, split
