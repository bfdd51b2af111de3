"""app.py: try runs and models in the browser (smollm.app, Gradio)."""

from __future__ import annotations

from smollm.cli import Parser
from smollm.config import KERNEL_CHOICES


def app_parser() -> Parser:
    p = Parser(prog="app.py", description="Try smollm-triton checkpoints in the browser (Gradio).")
    p.add_argument("--run", action="append", default=None,
                   help="run directory or glob (repeatable; default: runs/*)")
    p.add_argument("--model", action="append", default=[],
                   help="also offer this checkpoint, Hugging Face directory, .gguf, hub id or the URL of a run's "
                        "remote copy (s3://...; repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--kernels", default="torch", choices=KERNEL_CHOICES)
    p.add_argument("--screenshot", metavar="PNG", default=None,
                   help="serve, generate once in headless Chromium, save a screenshot there, and exit")
    return p


def main(argv=None) -> int:
    return run_args(app_parser().parse_args(argv))


def run_args(args) -> int:
    """app.py with its parsed arguments (app_parser's)."""
    from smollm.app import build_app, find_runs, screenshot

    runs = find_runs(args.run or ["runs/*"])
    app = build_app(runs, args.model, args.kernels)
    if args.screenshot is None:
        app.queue().launch(server_name=args.host, server_port=args.port)
        return 0
    app.queue().launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True, quiet=True)
    try:
        text = screenshot(f"http://{args.host}:{args.port}/", args.screenshot)
    finally:
        app.close()
    print(f"wrote {args.screenshot}: {text!r}")
    return 0
