"""Checkpoints of a run (their layout: smollm.runs): each written whole into a temporary directory
and renamed into place, then `checkpoints/latest` names it; older ones keep their weights but lose
their optimizer state."""

from __future__ import annotations

import json
import os
import random

import torch

from smollm.files import atomic_dir, atomic_write_bytes
from smollm.runs import CHECKPOINT_INFO, RUN_CONFIG, STEP_NAME, TRAINER_STATE, Run
from smollm.weights import WEIGHTS_FILE, read_safetensors, write_hf_files


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


def save_checkpoint(run_dir: str, model, trainer_state: dict, run_config_yaml: str, tokenizer=None,
                    keep_trainer_states: int = 2) -> str:
    """Write the checkpoint of trainer_state["step"] atomically, point `latest` at it, and drop the
    optimizer states of all but the newest keep_trainer_states checkpoints (weights stay: they are
    the record of the run that generate.py compares)."""
    run = Run(run_dir)
    final = run.checkpoint(trainer_state["step"])
    with atomic_dir(final, overwrite=True) as tmp:
        write_hf_files(model, tmp, tokenizer)
        torch.save(trainer_state, os.path.join(tmp, TRAINER_STATE))
        # What the weights are, kept when trainer_state.pt is pruned (generate.py --checkpoints).
        val = trainer_state.get("last_val_loss")
        info = {"step": trainer_state["step"], "tokens": trainer_state.get("tokens"),
                "loss": trainer_state.get("last_loss"),
                "val_loss": val[1] if val and val[0] == trainer_state["step"] else None}
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


def load_checkpoint(ckpt: str) -> tuple[dict[str, torch.Tensor], dict, str]:
    """(model state dict, trainer state, run config YAML) of a checkpoint directory."""
    state = read_safetensors(ckpt)
    try:
        trainer_state = torch.load(os.path.join(ckpt, TRAINER_STATE), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{os.path.join(ckpt, TRAINER_STATE)}: not a readable trainer state ({e})") from e
    with open(os.path.join(ckpt, RUN_CONFIG)) as f:
        run_config_yaml = f.read()
    return state, trainer_state, run_config_yaml
