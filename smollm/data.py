"""Token shards: the on-disk format and the training loader.

A dataset directory holds `meta.json` and shards `train_000000.bin`, `val_000000.bin`, ...: a
1024-byte header of int32 (magic, version, token count, vocab size, EOS id; rest zero), then uint16
tokens, documents separated by EOS. Shards are read with numpy.memmap, never into RAM whole.

Batches are random windows, of one of two kinds (data.windows):
- stream (TokenWindows): a window starts at any token and runs across document boundaries.
- aligned (DocumentWindows): a window is whole documents, each as <EOS> then its tokens (the EOS
  before a document is its beginning-of-sequence token), packed best-fit; a document longer than the
  room left is cropped, and its rest is not used. Every window starts at a document start.
Either way a document starts at each EOS of a window (document_ids): the model's attention stays
inside one document when given those ids (block-causal), which the aligned windows are made for.

The batch at step s depends only on (seed, s, rank): one generator seeded with (seed, s) draws the
windows of all ranks at once and rank r takes its own slice, so a resumed run sees exactly the
batches it would have seen, ranks never share a window (stream: drawn without replacement), and N
ranks together see what one process with N times the batch would.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from dataclasses import dataclass

import numpy as np
import torch

from smollm.files import atomic_write_bytes

MAGIC = 0x534D4F4C  # "SMOL"
VERSION = 1
HEADER_BYTES = 1024
HEADER_INTS = HEADER_BYTES // 4
SPLITS = ("train", "val")


class ShardError(ValueError):
    """A shard or dataset directory that cannot be used; the message names the file."""


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


SAMPLE_BLOCKS, SAMPLE_BYTES = 16, 4096  # the sampled checksum: 16 blocks of 4 KiB spread over the file


def _sample_spans(size: int) -> list[tuple[int, int]]:
    """(offset, length) of the blocks the sampled checksum reads: the first, the last, and evenly between."""
    if size <= SAMPLE_BLOCKS * SAMPLE_BYTES:
        return [(0, size)]
    last = size - SAMPLE_BYTES
    return [(i * last // (SAMPLE_BLOCKS - 1), SAMPLE_BYTES) for i in range(SAMPLE_BLOCKS)]


def _sample_digest(size: int, read) -> str:
    """sha256 of the size and the sampled blocks, read(offset, length) giving each block's bytes."""
    h = hashlib.sha256(str(size).encode())
    for offset, length in _sample_spans(size):
        h.update(read(offset, length))
    return h.hexdigest()


def shard_checksums(data: bytes) -> dict:
    """{"sha256": of every byte, "sample_sha256": of the size and the sampled blocks} of a shard's bytes:
    what meta.json records for each shard, checked by verify_shard."""
    return {"sha256": hashlib.sha256(data).hexdigest(),
            "sample_sha256": _sample_digest(len(data), lambda offset, n: data[offset:offset + n])}


def verify_shard(path: str, entry: dict, full: bool = False) -> None:
    """ShardError unless the shard meta.json's entry lists is there with the bytes it recorded: the
    sampled blocks (a few KiB: at every open), or every byte (full: on demand). Only its presence is
    checked for entries without checksums (datasets prepared before they were recorded)."""
    if not os.path.isfile(path):
        raise ShardError(f"{path}: listed in meta.json but missing")
    key = "sha256" if full else "sample_sha256"
    if key not in entry:
        return
    with open(path, "rb") as f:
        if full:
            h = hashlib.sha256()
            while chunk := f.read(1 << 24):
                h.update(chunk)
            digest = h.hexdigest()
        else:
            digest = _sample_digest(os.path.getsize(path), lambda offset, n: (f.seek(offset), f.read(n))[1])
    if digest != entry[key]:
        raise ShardError(f"{path}: changed since it was prepared (its bytes differ from the checksum in meta.json); "
                         f"prepare the dataset again into a new directory")


def dataset_identity(directory: str) -> dict | None:
    """What a run records of the data it trains on: {"id": one digest of every shard's checksum, "shards":
    {file: sha256}}; None for a dataset prepared before checksums were recorded."""
    shards = read_meta(directory).get("shards", [])
    if not shards or any("sha256" not in s for s in shards):
        return None
    files = {s["file"]: s["sha256"] for s in shards}
    return {"id": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16], "shards": files}


def write_shard(path: str, tokens: np.ndarray, vocab_size: int, eos_id: int) -> dict:
    """The shard written atomically; returns its shard_checksums."""
    if vocab_size > 65536:
        raise ShardError(f"{path}: vocab size {vocab_size} does not fit uint16 tokens")
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ShardError(f"{path}: token ids outside [0, {vocab_size})")
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:5] = (MAGIC, VERSION, tokens.size, vocab_size, eos_id)
    data = header.tobytes() + tokens.astype(np.uint16).tobytes()
    atomic_write_bytes(path, [data])
    return shard_checksums(data)


def read_header(path: str) -> dict:
    size = os.path.getsize(path)
    if size < HEADER_BYTES:
        raise ShardError(f"{path}: truncated ({size} bytes, shorter than the {HEADER_BYTES}-byte header)")
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    if header[0] != MAGIC:
        raise ShardError(f"{path}: bad magic {int(header[0]):#x} (expected {MAGIC:#x}); not a token shard")
    if header[1] != VERSION:
        raise ShardError(f"{path}: unsupported shard version {int(header[1])} (expected {VERSION})")
    count, vocab, eos = int(header[2]), int(header[3]), int(header[4])
    expected = HEADER_BYTES + 2 * count
    if size != expected:
        raise ShardError(f"{path}: truncated or padded: {size} bytes, the header promises {expected} "
                         f"({count} tokens)")
    return {"tokens": count, "vocab_size": vocab, "eos_id": eos}


def open_shard(path: str, vocab_size: int | None = None, check_ids: bool = True) -> np.memmap:
    """The shard's tokens as a read-only uint16 memmap, after checking header, size and ids."""
    header = read_header(path)
    vocab = vocab_size or header["vocab_size"]
    if header["vocab_size"] > vocab:
        raise ShardError(f"{path}: made for vocab size {header['vocab_size']}, larger than the model's {vocab}")
    tokens = np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_BYTES, shape=(header["tokens"],))
    if check_ids and tokens.size:
        top = int(tokens.max())  # one sequential pass over the file
        if top >= vocab:
            bad = int(np.argmax(tokens >= vocab))
            raise ShardError(f"{path}: token id {int(tokens[bad])} at position {bad} is outside the vocabulary "
                             f"[0, {vocab})")
    return tokens


def read_meta(directory: str) -> dict:
    path = os.path.join(directory, "meta.json")
    if not os.path.isfile(path):
        raise ShardError(f"{directory}: no meta.json; not a prepared dataset (run python -m smollm.prepare)")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ShardError(f"{path}: not valid JSON ({e})") from None


def shard_paths(directory: str, split: str) -> list[str]:
    meta = read_meta(directory)
    names = [s["file"] for s in meta.get("shards", []) if s["split"] == split]
    return [os.path.join(directory, n) for n in names]


@dataclass
class Batch:
    x: torch.Tensor  # (B, T) int64 inputs
    y: torch.Tensor  # (B, T) int64 targets: the next tokens
    docs: torch.Tensor | None = None  # (B, T) int32 document ids of x (aligned windows); None: causal across them


def document_ids(x: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, T) tokens -> (B, T) int32 ids, one per document: a new document starts at each EOS."""
    return (x == eos_id).cumsum(dim=1, dtype=torch.int32)


class TokenWindows:
    """Random (x, y) windows from one split of a prepared dataset, deterministic in (seed, step, rank)."""

    def __init__(self, directory: str, split: str, seq_len: int, vocab_size: int | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.seq_len = seq_len
        entries = [e for e in read_meta(directory).get("shards", []) if e["split"] == split]
        if not entries:
            raise ShardError(f"{directory}: no {split} shards in meta.json")
        self.shards = []
        for entry in entries:
            path = os.path.join(directory, entry["file"])
            verify_shard(path, entry)
            self.shards.append(open_shard(path, vocab_size))
        # Window starts of shard i: [0, n_i - T); global index -> (shard, offset) by searchsorted. A shard
        # shorter than one window (a corpus's short last shard) has none: its few tokens are not drawn.
        starts = np.array([max(0, t.size - seq_len) for t in self.shards], dtype=np.int64)
        self.cum_starts = np.concatenate([[0], np.cumsum(starts)])
        self.n_windows = int(self.cum_starts[-1])
        if self.n_windows == 0:
            longest = max(t.size for t in self.shards)
            raise ShardError(f"{directory}: no {split} shard is as long as one window of {seq_len} + 1 tokens (the "
                             f"longest holds {longest:,}); prepare more data or lower data.seq_len")
        self.n_tokens = int(sum(t.size for t in self.shards))
        self.eos_id = read_header(os.path.join(directory, entries[0]["file"]))["eos_id"]

    aligned = False  # windows cross document boundaries: trained with plain causal attention

    def window_starts(self, seed: int, step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """Global start indices of this rank's windows at this step."""
        if world_size * batch_size > self.n_windows:
            raise ShardError(f"{world_size * batch_size} windows per step, but the split has only {self.n_windows}")
        rng = np.random.default_rng([seed, step])
        picks = rng.choice(self.n_windows, size=world_size * batch_size, replace=False)
        return picks[rank * batch_size:(rank + 1) * batch_size]

    def get_batch_numpy(self, seed: int, step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """(B, T + 1) int64 token windows."""
        picks = self.window_starts(seed, step, batch_size, rank, world_size)
        shard = np.searchsorted(self.cum_starts, picks, side="right") - 1
        offset = picks - self.cum_starts[shard]
        out = np.empty((batch_size, self.seq_len + 1), dtype=np.int64)
        for i, (s, o) in enumerate(zip(shard, offset)):
            out[i] = self.shards[s][o:o + self.seq_len + 1]
        return out

    def get_batch(self, seed: int, step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> Batch:
        w = torch.from_numpy(self.get_batch_numpy(seed, step, batch_size, rank, world_size))  # (B, T + 1)
        x = w[:, :-1]
        return Batch(x, w[:, 1:], document_ids(x, self.eos_id) if self.aligned else None)


class DocumentWindows(TokenWindows):
    """Windows of whole documents, best-fit packed (nanochat's way), deterministic in (seed, step, rank).

    Each step's generator draws documents at random (with replacement) into a pool of `pool` of them.
    A window is filled by the longest pooled document that fits the room left (each placed as <EOS>
    then its tokens; a document at the very start of a shard gets an EOS too), the pool refilled
    from the generator after each; when none fits, the shortest pooled one is cropped to the room
    left, and the rest of it is dropped. So nothing is padded and every window starts at a document
    start; what is lost is the cropped tails (cropped_fraction)."""

    aligned = True

    def __init__(self, directory: str, split: str, seq_len: int, vocab_size: int | None = None, pool: int = 64):
        super().__init__(directory, split, seq_len, vocab_size)
        self.pool = pool
        starts, ends, shard = [], [], []  # documents: [start, end) in shard, the EOS after them left out
        for i, tokens in enumerate(self.shards):
            eos = np.flatnonzero(np.asarray(tokens) == self.eos_id)  # one pass over the shard
            s = np.concatenate([[0], eos + 1])
            e = np.concatenate([eos, [tokens.size]])
            keep = e > s  # no empty documents (two EOS in a row, or the shard's final EOS)
            starts.append(s[keep]), ends.append(e[keep]), shard.append(np.full(int(keep.sum()), i))
        self.doc_start, self.doc_end = np.concatenate(starts), np.concatenate(ends)
        self.doc_shard = np.concatenate(shard)
        self.n_docs = len(self.doc_start)
        if self.n_docs == 0:
            raise ShardError(f"{directory}: no {split} documents")
        self.n_windows = self.n_docs

    def _pack(self, rng: np.random.Generator, rows: int) -> tuple[np.ndarray, int]:
        """(rows, T + 1) int64 windows, and the tokens of the documents placed in them that were cropped."""
        cap = self.seq_len + 1
        out = np.empty((rows, cap), dtype=np.int64)
        pool = list(rng.integers(self.n_docs, size=self.pool))
        lengths = lambda d: int(self.doc_end[d] - self.doc_start[d]) + 1  # noqa: E731 -- with its EOS
        cropped = 0
        for r in range(rows):
            pos = 0
            while pos < cap:
                room = cap - pos
                fits = [i for i, d in enumerate(pool) if lengths(d) <= room]
                if fits:
                    i = max(fits, key=lambda i: lengths(pool[i]))
                else:
                    i = min(range(len(pool)), key=lambda i: lengths(pool[i]))
                d = pool[i]
                pool[i] = int(rng.integers(self.n_docs))
                n = min(lengths(d), room)
                cropped += lengths(d) - n
                tokens = self.shards[self.doc_shard[d]]
                out[r, pos] = self.eos_id
                out[r, pos + 1:pos + n] = tokens[self.doc_start[d]:self.doc_start[d] + n - 1]
                pos += n
        return out, cropped

    def get_batch_numpy(self, seed: int, step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """(B, T + 1) int64 windows of whole documents."""
        out, _ = self._pack(np.random.default_rng([seed, step]), world_size * batch_size)
        return out[rank * batch_size:(rank + 1) * batch_size]

    def cropped_fraction(self, seed: int, batch_size: int, steps: int = 8) -> float:
        """The share of the tokens of the documents placed in windows that cropping dropped, over the
        first `steps` steps' batches."""
        cropped = 0
        for step in range(steps):
            _, c = self._pack(np.random.default_rng([seed, step]), batch_size)
            cropped += c
        return cropped / (cropped + steps * batch_size * (self.seq_len + 1))


class BatchLoader:
    """Batches for steps start, start + 1, ... on `device`. On a GPU: pinned host memory, copies
    with non_blocking=True, and a background thread that prepares the next batches while the
    current step runs."""

    def __init__(self, windows: TokenWindows, batch_size: int, seed: int, start_step: int = 0, rank: int = 0,
                 world_size: int = 1, device: str | torch.device = "cpu", prefetch: int = 2):
        self.windows, self.batch_size, self.seed = windows, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.step = start_step
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda"
        self._queue: queue.Queue | None = None
        if self.pin and prefetch > 0:
            self._queue = queue.Queue(maxsize=prefetch)
            self._stop = threading.Event()
            threading.Thread(target=self._worker, args=(start_step,), daemon=True).start()

    def _host_batch(self, step: int) -> torch.Tensor:
        w = torch.from_numpy(self.windows.get_batch_numpy(self.seed, step, self.batch_size, self.rank,
                                                          self.world_size))
        return w.pin_memory() if self.pin else w

    def _worker(self, step: int):
        while not self._stop.is_set():
            self._queue.put((step, self._host_batch(step)))
            step += 1

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        if self._queue is not None:
            step, w = self._queue.get()
            assert step == self.step
        else:
            w = self._host_batch(self.step)
        self.step += 1
        w = w.to(self.device, non_blocking=True)  # (B, T + 1)
        x = w[:, :-1]
        return Batch(x, w[:, 1:], document_ids(x, self.windows.eos_id) if self.windows.aligned else None)

    def close(self):
        if self._queue is not None:
            self._stop.set()
            while not self._queue.empty():
                self._queue.get_nowait()
