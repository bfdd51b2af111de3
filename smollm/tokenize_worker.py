"""What runs in prepare's worker processes. Kept apart from smollm.prepare so that a spawned worker
imports only numpy and tokenizers (not torch): it starts in a fraction of a second."""

import hashlib
import itertools
import os

import numpy as np


def is_val(doc: str, val_fraction: float) -> bool:
    """Hash of the text, so the split does not depend on document order or worker count."""
    h = int.from_bytes(hashlib.blake2b(doc.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return h / 2 ** 64 < val_fraction

_worker_tok = None


def init_worker(tokenizer_json: str, threads: int):
    global _worker_tok
    # Each worker process also encodes its batch on `threads` of the tokenizer's own (Rust) threads:
    # processes spread the Python-side work, threads the encoding; together they fill the cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    os.environ["RAYON_NUM_THREADS"] = os.environ["RAYON_RS_NUM_CPUS"] = str(threads)
    from tokenizers import Tokenizer

    _worker_tok = Tokenizer.from_str(tokenizer_json)


def encode_batch(texts: list[str], val_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(all ids concatenated, per-document lengths, per-document split: 0 train, 1 val, -1 blank)."""
    encode = getattr(_worker_tok, "encode_batch_fast", _worker_tok.encode_batch)  # fast: no offsets
    encoded = encode(texts, add_special_tokens=False)
    id_lists = [e.ids for e in encoded]
    lengths = np.array([len(ids) for ids in id_lists], dtype=np.int64)
    ids = np.fromiter(itertools.chain.from_iterable(id_lists), dtype=np.uint16, count=int(lengths.sum()))
    split = np.array([-1 if not t.strip() else int(is_val(t, val_fraction)) for t in texts], dtype=np.int8)
    return ids, lengths, split


