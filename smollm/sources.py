"""A model to use, from wherever it is: a run directory (its newest good checkpoint), a checkpoint, a
Hugging Face directory, a .gguf file, a hub id, or the URL of a run's remote copy; with its tokenizer.
What generate.py, the app and the export load."""

from __future__ import annotations

import os
import sys

from smollm.checkpoint import CheckpointError, earlier_checkpoints, latest_checkpoint, verify_checkpoint
from smollm.errors import first_line
from smollm.remote import fetch_weights, is_url
from smollm.runs import TRAINER_STATE, is_run_dir
from smollm.tokenizer import load_tokenizer
from smollm.weights import load_model


def load(source: str, kernels: str = "torch", tokenizer: str | None = None):
    """(model, tokenizer) of a model source: load_resolved without the checkpoint it took."""
    return load_resolved(source, kernels, tokenizer)[:2]


def load_resolved(source: str, kernels: str = "torch", tokenizer: str | None = None):
    """(model, tokenizer, where the weights came from) of a model source: a run directory (its newest good
    checkpoint), a checkpoint or Hugging Face directory, a .gguf file, a hub id (smollm.weights.load_model),
    or the URL of a run's remote copy (smollm.remote.fetch_weights; the store's options from its environment). The tokenizer is
    `tokenizer` when given, else the one saved beside the weights (a checkpoint, an export with its
    tokenizer.json, a GGUF), else the default one (smollm.tokenizer.load_tokenizer)."""
    source = os.fspath(source)
    if is_url(source):  # a run's log.remote copy, or one checkpoint of it: fetched (and cached) first
        source = fetch_weights(source)
    if is_run_dir(source):
        source, model = _newest_good_weights(source, kernels)
    else:
        if os.path.isdir(source):
            verify_checkpoint(source, skip=(TRAINER_STATE,))  # the weights, config and tokenizer files
        model = load_model(source, kernels=kernels)
    own = source.endswith(".gguf") or os.path.isfile(os.path.join(source, "tokenizer.json"))
    tok = load_tokenizer(tokenizer or (source if own else None))
    if len(tok) > model.config.vocab_size:  # its ids past the embedding table would index out of range
        name = tokenizer or (source if own else "the default tokenizer")
        raise ValueError(f"tokenizer {name} has {len(tok):,} tokens, more than the vocabulary of {source} "
                         f"({model.config.vocab_size:,}); use the model's own tokenizer")
    return model, tok, source


def _newest_good_weights(run_dir: str, kernels: str):
    """(checkpoint, model) of the run's latest checkpoint; when that one is bad, a warning names the
    bad file and the newest good earlier one is loaded instead (as resolve_resumable does)."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise FileNotFoundError(f"run {run_dir} has no checkpoints yet")
    problems = []
    for ckpt in [latest, *earlier_checkpoints(run_dir, latest)]:
        try:
            verify_checkpoint(ckpt, skip=(TRAINER_STATE,))
            model = load_model(ckpt, kernels=kernels)
        except (ValueError, KeyError, OSError) as e:  # CheckpointError is a ValueError
            problems.append(first_line(e))
            continue
        if problems:
            print(f"warning: {'; '.join(problems)}; loading {ckpt} instead, the newest good checkpoint",
                  file=sys.stderr, flush=True)
        return ckpt, model
    raise CheckpointError(f"{run_dir}: no checkpoint of the run can be loaded: {'; '.join(problems)}")

