"""Try a run in the browser: `python app.py [--run runs/tiny] [--model PATH]` (extra `app`).
See smollm/app.py."""

import sys

from smollm.cli import app_parser

if __name__ == "__main__":
    args = app_parser().parse_args()  # --help and argument errors answer here, before gradio is imported
    from smollm.app import run_args

    sys.exit(run_args(args))
