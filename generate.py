"""python generate.py --help: continue a prompt with a SmolLM2 checkpoint, HF directory or GGUF.
See smollm/cli/generate.py."""

import sys

from smollm.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())  # --help and argument errors answer before torch is imported
