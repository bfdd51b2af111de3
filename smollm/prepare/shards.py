"""A dataset directory: its meta.json (what a run was made with, how far it got) and the shard
writer whose commits advance it. A commit is the unit of resuming."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from smollm.data import SPLITS, read_meta, shard_name, write_shard
from smollm.files import atomic_write_json


def tokenizer_fingerprint(tok) -> str:
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


def new_meta(tok, tokenizer_name: str | None, source: list[str], val_fraction: float, shard_tokens: int,
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


def resume_or_start(out: str, fresh: dict) -> dict:
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


class Shards:
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
                sums = write_shard(os.path.join(self.out, name), np.concatenate(self.buffers[split]),
                                   self.vocab_size, self.eos_id)
                meta["shards"].append({"file": name, "split": split, "index": self.commits,
                                       "tokens": self.counts[split], "documents": self.doc_counts[split], **sums})
                meta["tokens"][split] += self.counts[split]
                meta["documents"][split] += self.doc_counts[split]
            self.buffers[split].clear()
            self.counts[split] = self.doc_counts[split] = 0
        meta["docs_done"] += self.pending_docs
        self.pending_docs = 0
        self.commits += 1
        atomic_write_json(self.meta_path, meta)  # the commit point
