"""`python -m smollm.eval`: a model's scores on multiple-choice benchmarks, as lm-eval-harness scores
them (smollm.eval)."""

from __future__ import annotations

import os
import sys

from smollm.cli import Parser
from smollm.errors import error_line

TASK_NAMES = ["hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "openbookqa", "commonsense_qa"]


def eval_parser() -> Parser:
    p = Parser(prog="python -m smollm.eval", description="Score a model on multiple-choice benchmarks (log-likelihood "
               "of each choice, lm-eval-harness's prompts): acc, acc_norm, their standard errors and the average.")
    p.add_argument("--model", required=True, help="a run, checkpoint, Hugging Face directory, .gguf, hub id or the URL "
                   "of a run's remote copy")
    p.add_argument("--tasks", default=",".join(TASK_NAMES), help=f"comma-separated (default: all of {','.join(TASK_NAMES)})")
    p.add_argument("--data-dir", default=None, help="DIR/<task>.jsonl (or .parquet) in each dataset's own schema "
                   "(default: the datasets from the Hugging Face Hub)")
    p.add_argument("--limit", type=int, default=None, help="the first N records of each task")
    p.add_argument("--batch-size", type=int, default=16, help="packed rows per forward (an item's choices are one row)")
    p.add_argument("--out", default=None, help="write the scores and per-item log-likelihoods here (JSON)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--tokenizer", default=None, help="tokenizer path or hub id (default: the model's own)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (fp32 weights)")
    return p


def _fail(message: str) -> int:
    print(f"python -m smollm.eval: error: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = eval_parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        return _fail(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        return _fail(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.out and os.path.exists(args.out) and not args.overwrite:
        return _fail(f"--out {args.out} exists; pass --overwrite to replace it")
    if args.out and os.path.isdir(args.out):
        return _fail(f"--out {args.out} is a directory; give a file path")

    import torch
    from tqdm import tqdm

    from smollm.eval.results import table
    from smollm.eval.suite import evaluate
    from smollm.eval.tasks import load_items, parse_tasks
    from smollm.files import SourceNotFound, atomic_write_json
    from smollm.sources import load_resolved

    try:
        tasks = parse_tasks(args.tasks)
        items = {t.name: load_items(t, args.data_dir, args.limit) for t in tasks}  # every file read before the model
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
        model, tokenizer, where = load_resolved(args.model, tokenizer=args.tokenizer)
    except SourceNotFound as e:
        return _fail(e.describe("--model"))
    except (ValueError, OSError, RuntimeError) as e:  # a task, a file, a record, the model, the device
        return _fail(error_line(e))
    model = model.to(device=device, dtype=torch.float32)
    total = sum(len(v) for v in items.values())
    with tqdm(total=total, desc="evaluating", unit="item", disable=None) as bar:
        result = evaluate(model, tokenizer, tasks, items=items, batch_size=args.batch_size, device=device,
                          progress=bar.update)
    result = {"model": args.model, "weights": where, "data": args.data_dir or "hub", "limit": args.limit, **result}
    print(table(result))
    print(f"{total} items in {result['seconds']:.1f} s ({result['items_per_s']:.1f} items/s)")
    if args.out:
        try:
            atomic_write_json(args.out, result)
        except OSError as e:
            return _fail(f"--out {args.out}: {error_line(e)} (the scores are printed above)")
        print(f"wrote {args.out}")
    return 0
