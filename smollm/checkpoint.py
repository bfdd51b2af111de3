"""Checkpoints of a run (their layout: smollm.runs): each written whole into a temporary directory
and renamed into place, then `checkpoints/latest` names it; older ones keep their weights but lose
their optimizer state."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass

import torch

from smollm.files import atomic_dir, atomic_write_bytes
from smollm.runs import CHECKPOINT_INFO, RUN_CONFIG, STEP_NAME, TRAINER_STATE, Run, is_run_dir
from smollm.tokenizer import load_tokenizer
from smollm.weights import WEIGHTS_FILE, load_model, read_safetensors, write_hf_files


def rng_states() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainerState:
    """Everything besides the weights that a resumed run needs to continue exactly. A checkpoint
    writes to_dict() of it as trainer_state.pt; --resume reads it back with from_dict()."""

    step: int  # optimizer steps done
    tokens: int  # training tokens seen, all ranks together
    seed: int  # the data order: the batch of step s depends only on (seed, s, rank)
    world_size: int  # the global batch the data was cut for: world_size x micro_batch x grad_accum
    micro_batch: int
    grad_accum: int
    optimizer: dict  # AdamW's state_dict()
    scheduler: dict  # LambdaLR's state_dict()
    rng: dict  # rng_states()
    last_loss: float | None = None  # the loss of the latest step the host read
    last_val_loss: tuple[int, float] | None = None  # (step, loss) of the latest evaluation

    @property
    def global_batch(self) -> int:
        return self.world_size * self.micro_batch * self.grad_accum

    def to_dict(self) -> dict:
        # trainer_state.pt's keys: kept as they are so that existing checkpoints still resume.
        return {"optimizer": self.optimizer, "scheduler": self.scheduler, "step": self.step, "tokens": self.tokens,
                "data": {"seed": self.seed, "next_step": self.step}, "rng": self.rng, "last_loss": self.last_loss,
                "last_val_loss": self.last_val_loss, "world_size": self.world_size,
                "micro_batch": self.micro_batch, "grad_accum": self.grad_accum}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainerState":
        return cls(step=d["step"], tokens=d["tokens"], seed=d["data"]["seed"], world_size=d["world_size"],
                   micro_batch=d["micro_batch"], grad_accum=d["grad_accum"], optimizer=d["optimizer"],
                   scheduler=d["scheduler"], rng=d["rng"], last_loss=d.get("last_loss"),
                   last_val_loss=d.get("last_val_loss"))


def save_checkpoint(run_dir: str, model, state: TrainerState, run_config_yaml: str, tokenizer,
                    keep_trainer_states: int) -> str:
    """Write the checkpoint of state.step atomically, point `latest` at it, and drop the optimizer
    states of all but the newest keep_trainer_states checkpoints (weights stay: they are the record
    of the run that generate.py compares)."""
    run = Run(run_dir)
    final = run.checkpoint(state.step)
    with atomic_dir(final, overwrite=True) as tmp:
        write_hf_files(model, tmp, tokenizer)
        torch.save(state.to_dict(), os.path.join(tmp, TRAINER_STATE))
        # What the weights are, kept when trainer_state.pt is pruned (generate.py --checkpoints).
        val = state.last_val_loss
        info = {"step": state.step, "tokens": state.tokens, "loss": state.last_loss,
                "val_loss": val[1] if val and val[0] == state.step else None}
        with open(os.path.join(tmp, CHECKPOINT_INFO), "w") as f:
            json.dump(info, f, indent=1)
        with open(os.path.join(tmp, RUN_CONFIG), "w") as f:
            f.write(run_config_yaml)
    atomic_write_bytes(run.latest, [os.path.basename(final).encode() + b"\n"])
    with_state = [d for _, d in list_checkpoints(run_dir) if os.path.exists(os.path.join(d, TRAINER_STATE))]
    for d in with_state[:-keep_trainer_states]:
        if d != final:
            os.unlink(os.path.join(d, TRAINER_STATE))
    return final


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, directory) of every finished checkpoint of a run, oldest first."""
    root = Run(run_dir).checkpoints
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = STEP_NAME.match(name)
        if m and os.path.isfile(os.path.join(root, name, WEIGHTS_FILE)):
            found.append((int(m.group(1)), os.path.join(root, name)))
    return sorted(found)


def latest_checkpoint(run_dir: str) -> str | None:
    run = Run(run_dir)
    if os.path.isfile(run.latest):
        with open(run.latest) as f:
            path = os.path.join(run.checkpoints, f.read().strip())
        if os.path.isdir(path):
            return path
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def resolve_resumable(path: str) -> str:
    """A checkpoint directory, or a run directory (its latest checkpoint), that can be resumed."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint or run directory at {path}")
    ckpt = path if os.path.isfile(os.path.join(path, TRAINER_STATE)) else latest_checkpoint(path)
    if ckpt is None:
        if os.path.isfile(os.path.join(path, WEIGHTS_FILE)):
            latest = latest_checkpoint(os.path.dirname(os.path.dirname(os.path.abspath(path))))
            raise FileNotFoundError(f"{path} holds weights only (its optimizer state was pruned); resume from "
                                    f"{latest or 'the latest checkpoint'} instead")
        raise FileNotFoundError(f"{path} has no checkpoints (looked for {Run(path).checkpoints})")
    if not os.path.isfile(os.path.join(ckpt, TRAINER_STATE)):
        raise FileNotFoundError(f"{ckpt} has no {TRAINER_STATE}; cannot resume from it")
    return ckpt


def load_checkpoint(ckpt: str) -> tuple[dict[str, torch.Tensor], TrainerState, str]:
    """(model state dict, trainer state, run config YAML) of a checkpoint directory."""
    weights = read_safetensors(ckpt)
    path = os.path.join(ckpt, TRAINER_STATE)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable trainer state ({e})") from e
    try:
        state = TrainerState.from_dict(saved)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a trainer state of this trainer (missing or malformed: {e})") from e
    with open(os.path.join(ckpt, RUN_CONFIG)) as f:
        run_config_yaml = f.read()
    return weights, state, run_config_yaml


# ------------------------------------------- a model to use: generate.py, the app, the export --

def load(source: str, kernels: str = "torch", tokenizer: str | None = None):
    """(model, tokenizer) of a model source: a run directory (its latest checkpoint), a checkpoint or
    Hugging Face directory, a .gguf file or a hub id (smollm.weights.load_model). The tokenizer is
    `tokenizer` when given, else the one saved beside the weights (a checkpoint, an export with its
    tokenizer.json, a GGUF), else the default one (smollm.tokenizer.load_tokenizer)."""
    source = os.fspath(source)
    if is_run_dir(source):
        ckpt = latest_checkpoint(source)
        if ckpt is None:
            raise FileNotFoundError(f"run {source} has no checkpoints yet")
        source = ckpt
    model = load_model(source, kernels=kernels)
    own = source.endswith(".gguf") or os.path.isfile(os.path.join(source, "tokenizer.json"))
    return model, load_tokenizer(tokenizer or (source if own else None))
