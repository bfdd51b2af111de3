"""Checkpoints of a run (their layout: smollm.runs): each written whole into a temporary directory
and renamed into place, then `checkpoints/latest` names it; older ones keep their weights but lose
their optimizer state.

A sharded model (parallel.strategy=fsdp over several processes) is saved by every process at once:
its weights and optimizer state as torch.distributed.checkpoint shards (model/, optimizer/), nothing
gathered to one rank, beside the same config, tokenizer, trainer state and checkpoint.json; it loads
on any number of processes, and as whole weights in one (smollm.weights.read_sharded).

checkpoint.json records the sha256 of every other file of the checkpoint when it is written;
resuming (load_checkpoint) and loading a model (smollm.sources.load) check them, so a file that changed on disk
since (a bad disk, a copy cut short) is a one-line CheckpointError naming it, and resuming a run
falls back to its newest good checkpoint (resolve_resumable). Checkpoints without checksums (older
ones) still load."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from smollm.errors import first_line
from smollm.files import atomic_dir, atomic_write_bytes
from smollm.model import native_keys
from smollm.runs import (CHECKPOINT_INFO, MODEL_SHARDS, OPTIMIZER_SHARDS, RUN_CONFIG, STEP_NAME, TRAINER_STATE, Run,
                         is_trainer_state)
from smollm.weights import (SHARDS_INDEX, WEIGHTS_FILE, check_finite, read_safetensors, save_shards,
                            write_hf_files)

CHECKSUMS = "sha256"  # checkpoint.json's key: {file name: hex digest} of the checkpoint's other files


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: a file that changed since it was written (its sha256), is
    missing, truncated or unreadable, or weights with NaN/inf. The message is one line naming the file."""


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_files(directory: str) -> list[str]:
    """Every file of a checkpoint directory, as paths inside it ('model/__0_0.distcp'), sorted."""
    found = []
    for root, _, names in os.walk(directory):
        rel = os.path.relpath(root, directory)
        found += [name if rel == "." else f"{rel}/{name}".replace(os.sep, "/") for name in names]
    return sorted(found)


def checkpoint_checksums(directory: str) -> dict[str, str]:
    """sha256 of every file of a checkpoint directory (its shards' too) but checkpoint.json itself."""
    return {name: file_sha256(os.path.join(directory, name)) for name in checkpoint_files(directory)
            if name != CHECKPOINT_INFO}


def is_sharded_checkpoint(ckpt: str) -> bool:
    return os.path.isfile(os.path.join(ckpt, MODEL_SHARDS, SHARDS_INDEX))


def read_info(ckpt: str) -> dict:
    """checkpoint.json of a checkpoint ({} when it has none: another model): a CheckpointError naming it
    when it is unreadable or not the shape save_checkpoint writes (step and tokens whole numbers,
    losses numbers or null, sha256 a mapping of file names to hex digests)."""
    path = os.path.join(ckpt, CHECKPOINT_INFO)
    try:
        with open(path, "rb") as f:
            info = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({first_line(e)}); the checkpoint is damaged") from None
    problem = None
    if not isinstance(info, dict):
        problem = f"a JSON {type(info).__name__}, not an object"
    else:
        for key, kinds in (("step", (int,)), ("tokens", (int,)), ("loss", (int, float, type(None))),
                           ("val_loss", (int, float, type(None)))):
            if key in info and (not isinstance(info[key], kinds) or isinstance(info[key], bool)):
                problem = f"{key} is {info[key]!r}"
                break
        sums = info.get(CHECKSUMS, {})
        if problem is None and not (isinstance(sums, dict) and all(isinstance(v, str) for v in sums.values())):
            problem = f"{CHECKSUMS} is not a mapping of file names to digests"
    if problem:
        raise CheckpointError(f"{path}: not a checkpoint record ({problem}); the checkpoint is damaged")
    return info


def verify_checkpoint(ckpt: str, skip: tuple[str, ...] = ()) -> None:
    """Check the files of a checkpoint against the sha256 checkpoint.json recorded (except `skip`);
    a CheckpointError naming the first that differs or is missing. Nothing to check for checkpoints
    written before checksums were recorded, or for directories that are not our checkpoints. A
    pruned optimizer state is not missing; skip holding trainer_state.pt skips all of it (optimizer/ too)."""
    if not os.path.isfile(os.path.join(ckpt, CHECKPOINT_INFO)):
        return
    for name, want in sorted(read_info(ckpt).get(CHECKSUMS, {}).items()):
        path = os.path.join(ckpt, name)
        if name in skip or is_trainer_state(name) and (TRAINER_STATE in skip or not os.path.exists(path)):
            continue
        try:
            got = file_sha256(path)
        except OSError as e:
            raise CheckpointError(f"{path}: missing or unreadable ({first_line(e)}); checkpoint.json "
                                  f"lists it") from e
        if got != want:
            raise CheckpointError(f"{path}: corrupt (its sha256 differs from the one recorded when the checkpoint "
                                  f"was written: changed, truncated or damaged on disk)")


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
    optimizer: dict | None  # the optimizer's state_dict(); None: in the checkpoint's optimizer/ shards
    scheduler: dict  # LambdaLR's state_dict()
    rng: dict  # rng_states()
    last_loss: float | None = None  # the mean training loss since the previous log line (as metrics.jsonl)
    last_val_loss: tuple[int, float] | None = None  # (step, loss) of the latest evaluation
    data_identity: dict | None = None  # smollm.data.dataset_identity of the data trained on (None: unknown)

    @property
    def global_batch(self) -> int:
        return self.world_size * self.micro_batch * self.grad_accum

    def to_dict(self) -> dict:
        # trainer_state.pt's keys: kept as they are so that existing checkpoints still resume.
        return {"optimizer": self.optimizer, "scheduler": self.scheduler, "step": self.step, "tokens": self.tokens,
                "data": {"seed": self.seed, "next_step": self.step, "identity": self.data_identity}, "rng": self.rng,
                "last_loss": self.last_loss, "last_val_loss": self.last_val_loss, "world_size": self.world_size,
                "micro_batch": self.micro_batch, "grad_accum": self.grad_accum}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainerState":
        return cls(step=d["step"], tokens=d["tokens"], seed=d["data"]["seed"], world_size=d["world_size"],
                   micro_batch=d["micro_batch"], grad_accum=d["grad_accum"], optimizer=d["optimizer"],
                   scheduler=d["scheduler"], rng=d["rng"], last_loss=d.get("last_loss"),
                   last_val_loss=d.get("last_val_loss"), data_identity=d["data"].get("identity"))


def save_checkpoint(run_dir: str, model, state: TrainerState, run_config_yaml: str, tokenizer,
                    keep_trainer_states: int, sharded_opt=None) -> str | None:
    """Write the checkpoint of state.step atomically, point `latest` at it, and drop the optimizer
    states of all but the newest keep_trainer_states checkpoints (weights stay: they are the record
    of the run that generate.py compares). With sharded_opt (the optimizer of an FSDP-sharded model),
    every process calls it and writes its shards of the weights and optimizer state into the same
    temporary directory, which rank 0 finishes; the other ranks return None."""
    run = Run(run_dir)
    final = run.checkpoint(state.step)
    if sharded_opt is not None and dist.get_rank() != 0:
        _save_state_shards(_broadcast_path(None), model, sharded_opt)
        return None
    with atomic_dir(final, overwrite=True) as tmp:
        if sharded_opt is not None:
            _save_state_shards(_broadcast_path(tmp), model, sharded_opt)
        write_hf_files(model, tmp, tokenizer, weights=sharded_opt is None)
        with open(os.path.join(tmp, TRAINER_STATE), "wb") as f:
            torch.save(state.to_dict(), f)
        with open(os.path.join(tmp, RUN_CONFIG), "w") as f:
            f.write(run_config_yaml)
        # What the weights are, kept when trainer_state.pt is pruned (generate.py --checkpoints), and
        # the sha256 of every other file (verify_checkpoint).
        val = state.last_val_loss
        info = {"step": state.step, "tokens": state.tokens, "loss": state.last_loss,
                "val_loss": val[1] if val and val[0] == state.step else None,
                CHECKSUMS: checkpoint_checksums(tmp)}
        with open(os.path.join(tmp, CHECKPOINT_INFO), "w") as f:
            json.dump(info, f, indent=1)
    atomic_write_bytes(run.latest, [os.path.basename(final).encode() + b"\n"])
    with_state = [d for _, d in list_checkpoints(run_dir) if os.path.exists(os.path.join(d, TRAINER_STATE))]
    for d in with_state[:-keep_trainer_states]:
        if d != final:
            os.unlink(os.path.join(d, TRAINER_STATE))
            shutil.rmtree(os.path.join(d, OPTIMIZER_SHARDS), ignore_errors=True)
    return final


def _broadcast_path(path: str | None) -> str:
    """Rank 0's temporary checkpoint directory, to every rank."""
    box = [path]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _save_state_shards(tmp: str, model, opt) -> None:
    """This process's shards of the weights (model/) and the optimizer state (optimizer/)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    save_shards(model, os.path.join(tmp, MODEL_SHARDS))
    with native_keys():
        dcp.save(get_optimizer_state_dict(model, opt), checkpoint_id=os.path.join(tmp, OPTIMIZER_SHARDS))


def load_optimizer_shards(ckpt: str, model, opt) -> None:
    """A sharded checkpoint's optimizer state into opt (of model, sharded or whole), on any number of
    processes; a CheckpointError naming the directory when it does not fit."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    where = os.path.join(ckpt, OPTIMIZER_SHARDS)
    with native_keys(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        state = get_optimizer_state_dict(model, opt)
        try:
            dcp.load(state, checkpoint_id=where)
        except Exception as e:  # noqa: BLE001 -- DCP's CheckpointException holds every rank's error
            raise CheckpointError(f"{where}: an optimizer state that does not fit this run ({first_line(e)})") from e
        set_optimizer_state_dict(model, opt, state)


def load_full_optimizer(model, opt, saved: dict) -> None:
    """A whole checkpoint's optimizer state (opt.state_dict() of one process) into the optimizer of an
    FSDP-sharded model: its parameter numbers named (the same order), then each process keeps its shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    name = {p: n for n, p in model.named_parameters()}
    fqn = {}
    for group, saved_group in zip(opt.param_groups, saved["param_groups"], strict=True):
        fqn.update(zip(saved_group["params"], (name[p] for p in group["params"]), strict=True))
    state = {"state": {fqn[i]: s for i, s in saved["state"].items()},
             "param_groups": [{**g, "params": [fqn[i] for i in g["params"]]} for g in saved["param_groups"]]}
    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, directory) of every finished checkpoint of a run, oldest first."""
    root = Run(run_dir).checkpoints
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = STEP_NAME.match(name)
        if m and (os.path.isfile(os.path.join(root, name, WEIGHTS_FILE)) or is_sharded_checkpoint(os.path.join(root, name))):
            found.append((int(m.group(1)), os.path.join(root, name)))
    return sorted(found)


def latest_checkpoint(run_dir: str) -> str | None:
    """The checkpoint `checkpoints/latest` names; when it names none (empty, damaged, or a checkpoint
    that is gone), a warning and the newest finished one."""
    run = Run(run_dir)
    name = None
    if os.path.isfile(run.latest):
        with open(run.latest, "rb") as f:
            name = f.read().decode("utf-8", "replace").strip()
        path = os.path.join(run.checkpoints, name)
        if STEP_NAME.match(name) and os.path.isdir(path):
            return path
    found = list_checkpoints(run_dir)  # only when `latest` names no checkpoint: this is every load's path
    if name is not None and found:
        print(f"warning: {run.latest} names no checkpoint ({name[:40]!r}); using the newest one there, "
              f"{found[-1][1]}", file=sys.stderr, flush=True)
    return found[-1][1] if found else None


def earlier_checkpoints(run_dir: str, ckpt: str) -> list[str]:
    """The run's checkpoints before ckpt, newest first: where a bad latest one falls back to."""
    m = STEP_NAME.match(os.path.basename(ckpt))
    return [d for s, d in reversed(list_checkpoints(run_dir)) if d != ckpt and (m is None or s < int(m.group(1)))]


def resolve_resumable(path: str) -> str:
    """A checkpoint directory, or a run directory (its latest checkpoint), that can be resumed, checked
    by loading it (load_checkpoint then returns what was loaded without reading it again). A bad
    checkpoint named explicitly is a CheckpointError; for a run directory whose latest checkpoint is
    bad, a warning names the bad file and the newest good earlier checkpoint is resumed instead."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint or run directory at {path}")
    if os.path.isfile(os.path.join(path, TRAINER_STATE)):
        _check_resumable(path)
        return path
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        if os.path.isfile(os.path.join(path, WEIGHTS_FILE)):
            latest = latest_checkpoint(os.path.dirname(os.path.dirname(os.path.abspath(path))))
            raise FileNotFoundError(f"{path} holds weights only (its optimizer state was pruned); resume from "
                                    f"{latest or 'the latest checkpoint'} instead")
        raise FileNotFoundError(f"{path} has no checkpoints (looked for {Run(path).checkpoints})")
    if not os.path.isfile(os.path.join(ckpt, TRAINER_STATE)):
        raise FileNotFoundError(f"{ckpt} has no {TRAINER_STATE}; cannot resume from it")
    earlier = [d for d in earlier_checkpoints(path, ckpt) if os.path.isfile(os.path.join(d, TRAINER_STATE))]
    problems = []
    for candidate in [ckpt, *earlier]:
        try:
            _check_resumable(candidate)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if problems:
            print(f"warning: {'; '.join(problems)}; resuming from {candidate} instead, the newest good checkpoint",
                  file=sys.stderr, flush=True)
        return candidate
    raise CheckpointError(f"{path}: no checkpoint of the run can be resumed: {'; '.join(problems)}")


# The checkpoint resolve_resumable loaded to check it, handed once to the load_checkpoint that follows.
_checked: tuple[tuple, tuple] | None = None


def _stamp(ckpt: str) -> tuple:
    ckpt = os.path.realpath(ckpt)
    return (ckpt, tuple(sorted((n, os.stat(os.path.join(ckpt, n)).st_size, os.stat(os.path.join(ckpt, n)).st_mtime_ns)
                               for n in os.listdir(ckpt))))


def _check_resumable(ckpt: str) -> None:
    global _checked
    _checked = None
    loaded = load_checkpoint(ckpt)
    _checked = (_stamp(ckpt), loaded)


def load_checkpoint(ckpt: str) -> tuple[dict[str, torch.Tensor], TrainerState, str]:
    """(model state dict, trainer state, run config YAML) of a checkpoint directory, its files checked
    against their recorded sha256 and the weights for NaN/inf: a CheckpointError naming the bad file.
    A sharded checkpoint's weights are None: each process reads its own part (smollm.weights.load_shards)."""
    global _checked
    if _checked is not None:
        stamp, loaded = _checked
        _checked = None
        try:
            if stamp == _stamp(ckpt):
                return loaded
        except OSError:
            pass
    verify_checkpoint(ckpt)
    weights = None
    if not is_sharded_checkpoint(ckpt):
        try:
            weights = read_safetensors(ckpt)
        except ValueError as e:
            raise CheckpointError(first_line(e)) from e
        try:
            check_finite(weights, os.path.join(ckpt, WEIGHTS_FILE))
        except ValueError as e:
            raise CheckpointError(str(e)) from e
    path = os.path.join(ckpt, TRAINER_STATE)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable trainer state (truncated or corrupt? {first_line(e)})") from e
    try:
        state = TrainerState.from_dict(saved)
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a trainer state of this trainer (missing or malformed: {e})") from e
    with open(os.path.join(ckpt, RUN_CONFIG)) as f:
        run_config_yaml = f.read()
    return weights, state, run_config_yaml
