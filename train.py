"""Pretrain SmolLM2 from scratch: `python train.py [--config configs/X.yaml] [section.key=value ...]`;
also `train.py plot RUN` (the loss curve) and `train.py export RUN OUT` (a Hugging Face directory).
See smollm/train.py."""

import sys

from smollm.cli import train_args

if __name__ == "__main__":
    parsed = train_args(sys.argv[1:])  # --help and argument errors answer here, before torch is imported
    from smollm.train import run_command

    sys.exit(run_command(*parsed))
