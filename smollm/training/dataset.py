"""The run's data: its shards prepared on first use (smollm.prepare), opened as training and validation
windows, and the tokenizer its samples decode with, checked against the one the shards were made with."""

from __future__ import annotations

import os

from smollm.data import DocumentWindows, ShardError, TokenWindows, read_meta
from smollm.train_config import ConfigError, RunConfig
from smollm.training.parallel import Dist


def ready_dataset(cfg: RunConfig, d: Dist) -> None:
    """ensure_dataset on rank 0 while the other ranks wait."""
    if d.main:
        ensure_dataset(cfg)
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


def ensure_dataset(cfg: RunConfig) -> dict:
    """The shards at data.path; prepared first (from data.source) when there are none yet. A finished
    dataset is used as it is: where data.source, data.tokens or data.val_fraction say otherwise, a
    note says so (they are what a new preparation would use)."""
    from smollm.prepare.counts import parse_count
    from smollm.prepare.run import prepare

    path = cfg.data.path
    budget = parse_count(cfg.data.tokens) if cfg.data.tokens else None
    if not (os.path.isfile(os.path.join(path, "meta.json")) and read_meta(path).get("complete")):
        print(f"data: no finished dataset at {path}; preparing it from {cfg.data.source}", flush=True)
        return prepare(cfg.data.source, path, tokenizer_name=cfg.data.tokenizer, val_fraction=cfg.data.val_fraction,
                       max_tokens=budget)
    meta = read_meta(path)
    asked = [("data.source", "source_arg", cfg.data.source), ("data.tokens", "max_tokens", budget),
             ("data.val_fraction", "val_fraction", cfg.data.val_fraction)]  # (run config, meta.json, value)
    differ = [f"{key}={_null(meta[field])} (this run: {_null(want)})" for key, field, want in asked
              if field in meta and meta[field] != want]
    if differ:
        print(f"data: using the finished dataset at {path}, made with {', '.join(differ)}; to prepare one with "
              f"this run's values, point data.path at a new directory", flush=True)
    return meta


def _null(value) -> str:
    return "null" if value is None else str(value)


def open_data(cfg: RunConfig, d: Dist) -> tuple[TokenWindows, TokenWindows | None]:
    """The training windows of data.path (data.windows: stream or aligned) and its validation windows
    (stream, whatever data.windows: the same for every run; None when it has no split)."""
    meta, vocab_size = read_meta(cfg.data.path), cfg.model_config().vocab_size
    if meta["vocab_size"] > vocab_size:
        raise ConfigError(f"data.path: {cfg.data.path} has token ids up to {meta['vocab_size'] - 1}, but the model's "
                          f"vocab_size is {vocab_size}")
    kind = DocumentWindows if cfg.data.windows == "aligned" else TokenWindows
    train_windows = kind(cfg.data.path, "train", cfg.data.seq_len, vocab_size)
    if train_windows.aligned and d.main:
        batch = d.world * cfg.train.micro_batch * cfg.train.grad_accum
        print(f"data: aligned windows of whole documents ({train_windows.n_docs:,} in the train split); cropping "
              f"drops {train_windows.cropped_fraction(cfg.train.seed, batch):.1%} of the tokens of the documents "
              f"drawn (the first 8 steps), which never reach the model", flush=True)
    try:
        val_windows = TokenWindows(cfg.data.path, "val", cfg.data.seq_len, vocab_size)
    except ShardError as e:
        val_windows = None
        if d.main:
            print(f"warning: no validation loss for this run ({e})", flush=True)
    return train_windows, val_windows


def load_run_tokenizer(cfg: RunConfig):
    """data.tokenizer, which the samples are decoded with: it must be the one data.path was prepared with."""
    from smollm.prepare.shards import tokenizer_fingerprint
    from smollm.tokenizer import load_tokenizer

    meta = read_meta(cfg.data.path)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    if meta.get("tokenizer_fingerprint") not in (None, tokenizer_fingerprint(tokenizer)):
        raise ConfigError(f"data.tokenizer: {tokenizer.name_or_path!r} is not the tokenizer {cfg.data.path} was "
                          f"prepared with ({meta.get('tokenizer')!r}); samples would decode to nonsense")
    return tokenizer
