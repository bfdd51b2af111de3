"""`train.py plot RUN`: redraw a run's loss curve (smollm.plot)."""

from __future__ import annotations

from smollm.cli import Parser


def plot_parser() -> Parser:
    p = Parser(prog="train.py plot", description="Draw a run's loss curve (loss.png).")
    p.add_argument("run", help="run directory (holds metrics.jsonl)")
    p.add_argument("--out", default=None, help="PNG path (default: RUN/loss.png)")
    return p


def run(args) -> int:
    """train.py plot with its parsed arguments."""
    from smollm.plot import plot_run

    print(plot_run(args.run, args.out))
    return 0
