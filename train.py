"""Pretrain SmolLM2 from scratch: `python train.py [--config configs/X.yaml] [section.key=value ...]`;
also `train.py plot RUN` (the loss curve) and `train.py export RUN OUT` (a Hugging Face directory).
See smollm/cli/train.py (the command) and smollm/training/ (the trainer)."""

import sys

from smollm.cli.train import main

if __name__ == "__main__":
    sys.exit(main())  # --help and argument errors answer before torch is imported
