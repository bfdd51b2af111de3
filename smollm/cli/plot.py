"""`train.py plot RUN`: redraw a run's loss curve (smollm.plot)."""

from __future__ import annotations

import os
import sys

from smollm.cli import Parser
from smollm.errors import error_line


def plot_parser() -> Parser:
    p = Parser(prog="train.py plot", description="Draw a run's loss curve (loss.png).")
    p.add_argument("run", help="run directory (holds metrics.jsonl)")
    p.add_argument("--out", default=None, help="PNG path (default: RUN/loss.png)")
    return p


def run(args) -> int:
    """train.py plot with its parsed arguments."""
    try:
        if not os.path.isdir(args.run):
            raise FileNotFoundError(f"{args.run}: no such run directory")
        parent = os.path.dirname(os.path.abspath(args.out)) if args.out else None
        if parent and not os.path.isdir(parent):  # said before drawing, naming --out (not its temporary file)
            raise FileNotFoundError(f"--out {args.out}: the directory {parent} does not exist")
        from smollm.plot import plot_run

        out = plot_run(args.run, args.out)
    except (ValueError, OSError) as e:  # a missing run or metrics.jsonl, a bad metrics line, an unwritable --out
        print(f"train.py plot: error: {error_line(e)}", file=sys.stderr)
        return 2
    print(out)
    return 0
