"""Try a run in the browser: `python app.py [--run runs/tiny] [--model PATH]` (extra `app`).
See smollm/app.py (the app) and smollm/cli/app.py (the command)."""

import sys

from smollm.cli.app import main

if __name__ == "__main__":
    sys.exit(main())  # --help and argument errors answer before gradio is imported
