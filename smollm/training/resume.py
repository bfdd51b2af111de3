"""Resuming: what a checkpoint restores (weights, optimizer, schedule, RNG), which settings a resumed
run may change and which it may not, where it writes, and a remote run brought home first."""

from __future__ import annotations

import dataclasses
import os

from smollm.checkpoint import TrainerState, load_checkpoint, resolve_resumable, set_rng_states
from smollm.runs import CHECKPOINTS, CONFIG
from smollm.train_config import ConfigError, RunConfig, ScheduleSection, apply_overrides, from_dict, load_config
from smollm.training.parallel import Dist
from smollm.weights import load_state_checked


def restore(ckpt: str, weights: dict, state: TrainerState, model, opt, sched, cfg: RunConfig, d: Dist) -> None:
    """A checkpoint's weights, optimizer, scheduler and RNG states over the freshly built ones."""
    load_state_checked(model, weights, ckpt)
    opt.load_state_dict(state.optimizer)
    sched.load_state_dict(state.scheduler)
    set_rng_states(state.rng)
    if state.global_batch != d.world * cfg.train.micro_batch * cfg.train.grad_accum:
        print("warning: the global batch differs from the checkpoint's; the data order changes", flush=True)


# What a resumed run may change (applied to the restored optimizer and scheduler), and what it may not.
MID_RUN_KEYS = ("optim.lr", "optim.weight_decay", "optim.betas", "optim.eps", "optim.grad_clip", "train.max_steps",
                *(f"schedule.{f.name}" for f in dataclasses.fields(ScheduleSection)))


def resume_changes(saved_yaml: str, cfg: RunConfig, ckpt: str) -> list[tuple[str, object, object]]:
    """(key, checkpoint's value, new value) of the settings that differ from the checkpoint's run and
    can change mid-run; ConfigError (one line) for a change that cannot: the model's shape, data.seq_len."""
    import yaml

    where = os.path.join(ckpt, "run_config.yaml")
    try:
        old = from_dict(yaml.safe_load(saved_yaml), where)
        old_model = old.model_config()
    except (ConfigError, yaml.YAMLError) as e:
        raise ConfigError(f"{where}: not a readable run configuration ({' '.join(str(e).split())})") from None
    new_model = cfg.model_config()
    for f in dataclasses.fields(new_model):
        a, b = getattr(old_model, f.name), getattr(new_model, f.name)
        if a != b:
            raise ConfigError(f"model ({f.name}): the checkpoint {ckpt} has {f.name}={a!r}, this run asks for {b!r}; "
                              f"a resumed run cannot change the model's shape (start a new run instead)")
    if old.data.seq_len != cfg.data.seq_len:
        raise ConfigError(f"data.seq_len: the checkpoint {ckpt} was trained with {old.data.seq_len}, this run asks "
                          f"for {cfg.data.seq_len}; a resumed run cannot change it (start a new run instead)")
    return [(k, old.get(k), cfg.get(k)) for k in MID_RUN_KEYS if old.get(k) != cfg.get(k)]


def run_dir_of(ckpt: str) -> str | None:
    """The run directory a checkpoint belongs to (<run>/checkpoints/step_N), or None for a loose one."""
    ckpt = os.path.normpath(ckpt)
    parent = os.path.dirname(ckpt)
    if os.path.basename(parent) != CHECKPOINTS:
        return None
    return os.path.dirname(parent) or "."


def fetch_remote_run(url: str, overrides: list[str]) -> str:
    """--resume URL: the remote run's files and newest resumable checkpoint brought into log.out_dir=
    when given, else into the out_dir its own config names (smollm.remote.fetch_run); returns it."""
    import yaml

    from smollm.remote import RemoteError, connect, describe, fetch_run

    given = apply_overrides(RunConfig(), overrides)  # only log.out_dir and log.remote_options are read here
    options = given.log.remote_options
    if _overridden(overrides, "log.out_dir"):
        dest = given.log.out_dir
    else:
        store = connect(url, options, where="--resume")
        try:
            dest = from_dict(yaml.safe_load(store.read(CONFIG)), f"{url}/{CONFIG}").log.out_dir
        except FileNotFoundError:
            raise RemoteError(f"--resume: {url} holds no run ({CONFIG} is missing)") from None
        except (ConfigError, yaml.YAMLError):
            raise
        except Exception as e:  # noqa: BLE001 -- the store's own errors
            raise RemoteError(f"--resume: cannot read {url} ({describe(e)})") from None
    print(f"resume: fetching {url} into {dest}", flush=True)
    return fetch_run(url, dest, options)


def _overridden(overrides: list[str], key: str) -> bool:
    return any(o.partition("=")[0].strip() == key for o in overrides)


def resumed_config(resume: str, config: str | None, overrides: list[str]) -> tuple[RunConfig, str]:
    """(the run config, the checkpoint) of `--resume PATH` (a run directory or a checkpoint; a bad newest
    checkpoint is warned about and passed over): the checkpoint's own config, or `config` when given,
    with the overrides on top. The run writes where it was resumed from (a copied run directory stays a
    copy), unless log.out_dir=... says otherwise."""
    import yaml

    ckpt = resolve_resumable(resume)
    if config is None:
        _, _, saved = load_checkpoint(ckpt)
        cfg = apply_overrides(from_dict(yaml.safe_load(saved), resume), overrides).validate()
    else:
        cfg = load_config(config, overrides)
    if not _overridden(overrides, "log.out_dir"):
        cfg.log.out_dir = run_dir_of(ckpt) or cfg.log.out_dir
    return cfg, ckpt
