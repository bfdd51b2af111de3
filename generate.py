"""python generate.py --help: continue a prompt with a SmolLM2 checkpoint, HF directory or GGUF."""

import sys

from smollm.cli import generate_parser

if __name__ == "__main__":
    args = generate_parser().parse_args()  # --help and argument errors answer here, before torch is imported
    from smollm.generate import run_args

    sys.exit(run_args(args))
