"""What a run measures besides its training loss: the validation loss and bits per byte, over the same
windows at every evaluation, and the downstream benchmarks of eval.* (smollm.eval) at checkpoints or
every eval.every steps."""

from __future__ import annotations

import math

import torch

from smollm.data import TokenWindows
from smollm.train_config import RunConfig
from smollm.training.device import autocast, out_of_memory_is_config_error
from smollm.training.step import IGNORE_INDEX

EVAL_SEED = 1_000_003  # the validation windows: the same every evaluation, whatever the run's seed


def token_bytes(tokenizer, vocab_size: int) -> torch.Tensor:
    """(V,) the UTF-8 bytes each token id stands for; 0 for special tokens (<|endoftext|>) and ids past
    the tokenizer. A byte-level BPE (SmolLM2's) spells each byte as one character of the token's
    string; any other tokenizer is measured by decoding each id alone."""
    special = set(tokenizer.all_special_ids)
    ids = list(range(min(vocab_size, len(tokenizer))))
    decoder = type(getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)).__name__
    if decoder == "ByteLevel":
        lengths = [len(t) for t in tokenizer.convert_ids_to_tokens(ids)]
    else:
        lengths = [len(tokenizer.decode([i]).encode()) for i in ids]
    out = torch.zeros(vocab_size, dtype=torch.long)
    out[: len(ids)] = torch.tensor([0 if i in special else n for i, n in zip(ids, lengths)], dtype=torch.long)
    return out


@torch.no_grad()
def validation_loss(model, windows: TokenWindows, cfg: RunConfig, device: torch.device,
                    nbytes: torch.Tensor | None = None) -> tuple[float, float | None]:
    """(mean loss, bits per byte) over the same eval_batches x micro_batch validation windows every time.
    Bits per byte: every target's loss in bits over the UTF-8 bytes of the text they spell (nbytes,
    token_bytes of the run's tokenizer), which compares across tokenizers; None without nbytes."""
    batch = min(cfg.train.micro_batch, windows.n_windows)
    total, count, text_bytes = 0.0, 0, 0
    for i in range(cfg.log.eval_batches):
        with out_of_memory_is_config_error(cfg, device):
            b = windows.get_batch(EVAL_SEED, i, batch)
            x, y = b.x.to(device), b.y.to(device)  # (batch, T)
            with autocast(device, cfg):
                loss = model(x, y)
        valid = y != IGNORE_INDEX
        n = int(valid.sum())
        total += float(loss) * n
        count += n
        if nbytes is not None:
            text_bytes += int(nbytes.to(y.device)[y[valid]].sum())
    bpb = total / (math.log(2) * text_bytes) if nbytes is not None and text_bytes else None
    return total / count, bpb


def eval_items(cfg: RunConfig) -> tuple[dict | None, str | None]:
    """(task name -> Items, None) of eval.*, read once at the start; (None, why) when there is nothing to
    score: no tasks, or the data cannot be read (the run says so once and trains on)."""
    if not cfg.eval.tasks:
        return None, None
    from smollm.errors import error_line
    from smollm.eval.tasks import load_items, parse_tasks

    try:
        return {t.name: load_items(t, cfg.eval.data_dir, cfg.eval.limit) for t in parse_tasks(cfg.eval.tasks)}, None
    except (ValueError, OSError) as e:
        return None, (f"note: eval: skipping the downstream evaluation ({error_line(e)}); "
                      f"training goes on")


def downstream_due(cfg: RunConfig, step: int, checkpoint: bool) -> bool:
    """Whether step is one that eval.* scores: step 0, the last, and every eval.every steps, or, without
    eval.every, each checkpoint."""
    if step == 0 or step == cfg.train.max_steps:
        return True
    return checkpoint if cfg.eval.every is None else step % cfg.eval.every == 0


def downstream(model, tokenizer, items: dict, cfg: RunConfig, device: torch.device) -> dict:
    """The eval record of the model as it is: {'tasks': per task scores, 'average': ...} (smollm.eval),
    in fp32 (the master weights, no autocast), without the per-item log-likelihoods."""
    from smollm.eval.suite import evaluate
    from smollm.eval.tasks import parse_tasks

    with out_of_memory_is_config_error(cfg, device):
        result = evaluate(model, tokenizer, parse_tasks(list(items)), items=items, batch_size=cfg.eval.batch_size,
                          device=device)
    return {"tasks": result["tasks"], "average": result["average"], "limit": cfg.eval.limit,
            "data": cfg.eval.data_dir or "hub", "seconds": result["seconds"]}
