"""Try a run in the browser: `python app.py [--run runs/tiny] [--model PATH]` (extra `app`).
See smollm/app.py."""

import sys

from smollm.app import main

if __name__ == "__main__":
    sys.exit(main())
