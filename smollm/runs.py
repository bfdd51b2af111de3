"""The layout of a run directory, named here and nowhere else:

    <run>/config.yaml           the run's configuration (train.py writes it at every start)
    <run>/metrics.jsonl         one JSON object per log line or evaluation
    <run>/samples.jsonl         continuations of the fixed prompts at every checkpoint (the data)
    <run>/samples.md            the same, to read
    <run>/loss.png              the loss curve
    <run>/tensorboard/          the same scalars for TensorBoard (when it is installed)
    <run>/checkpoints/latest    the name of the newest checkpoint
    <run>/checkpoints/step_000123/
        model.safetensors, config.json, generation_config.json, tokenizer files: a Hugging Face directory
        trainer_state.pt        optimizer, scheduler, step, tokens, RNG states (pruned in older ones)
        checkpoint.json         step, tokens, losses (kept when trainer_state.pt is pruned)
        run_config.yaml         the run's configuration when the checkpoint was written
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

CHECKPOINTS = "checkpoints"
LATEST = "latest"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SAMPLES_JSONL = "samples.jsonl"
SAMPLES_MD = "samples.md"
LOSS_PNG = "loss.png"
TENSORBOARD = "tensorboard"
# Inside a checkpoint directory (besides the Hugging Face files, smollm.weights)
TRAINER_STATE = "trainer_state.pt"
CHECKPOINT_INFO = "checkpoint.json"
RUN_CONFIG = "run_config.yaml"
STEP_NAME = re.compile(r"^step_(\d+)$")


@dataclass(frozen=True)
class Run:
    """Paths of one run directory (nothing is created by naming them)."""

    path: str

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def title(self) -> str:
        return os.path.basename(os.path.abspath(self.path))

    @property
    def config(self) -> str:
        return self.file(CONFIG)

    @property
    def metrics(self) -> str:
        return self.file(METRICS)

    @property
    def samples_jsonl(self) -> str:
        return self.file(SAMPLES_JSONL)

    @property
    def samples_md(self) -> str:
        return self.file(SAMPLES_MD)

    @property
    def loss_png(self) -> str:
        return self.file(LOSS_PNG)

    @property
    def tensorboard(self) -> str:
        return self.file(TENSORBOARD)

    @property
    def checkpoints(self) -> str:
        return self.file(CHECKPOINTS)

    @property
    def latest(self) -> str:
        return os.path.join(self.checkpoints, LATEST)

    def checkpoint(self, step: int) -> str:
        return os.path.join(self.checkpoints, f"step_{step:06d}")


def is_run_dir(path: str) -> bool:
    """A directory that holds (or held) checkpoints."""
    return os.path.isdir(Run(path).checkpoints)
