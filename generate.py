"""python generate.py --help: continue a prompt with a SmolLM2 checkpoint, HF directory or GGUF."""

import sys

from smollm.generate import main

if __name__ == "__main__":
    sys.exit(main())
