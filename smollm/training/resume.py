"""Resuming: what a checkpoint restores (weights, optimizer, schedule, RNG), which settings a resumed
run may change and which it may not, where it writes, and a remote run brought home first."""

from __future__ import annotations

import dataclasses
import os

from smollm.checkpoint import (CheckpointError, TrainerState, list_checkpoints, load_checkpoint, load_full_optimizer,
                               load_optimizer_shards, resolve_resumable, set_rng_states)
from smollm.runs import CONFIG, MODEL_SHARDS, is_run_dir, refuse_if_locked, run_of_checkpoint
from smollm.train_config import ConfigError, RunConfig, ScheduleSection, apply_overrides, from_dict, load_config
from smollm.training.parallel import Dist, is_sharded
from smollm.weights import load_shards, load_state_checked


def restore(ckpt: str, weights: dict | None, state: TrainerState, model, opt, sched, cfg: RunConfig, d: Dist) -> None:
    """A checkpoint's weights, optimizer, scheduler and RNG states over the freshly built ones (whole or
    sharded, each either way: a sharded checkpoint (weights None) is read by every process for its
    own part, on any number of processes; a whole one into a sharded model keeps each process's part)."""
    if weights is None:
        try:
            load_shards(model, os.path.join(ckpt, MODEL_SHARDS))
        except ValueError as e:
            raise CheckpointError(str(e)) from e
        load_optimizer_shards(ckpt, model, opt)
    elif is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        from smollm.model import SmolLM, native_keys

        whole = SmolLM.empty(model.config)  # Hugging Face's keys in, the model's own out
        load_state_checked(whole, weights, ckpt)
        with native_keys():
            set_model_state_dict(model, whole.state_dict(), options=StateDictOptions(full_state_dict=True))
        load_full_optimizer(model, opt, state.optimizer)
    else:
        load_state_checked(model, weights, ckpt)
        opt.load_state_dict(state.optimizer)
    sched.load_state_dict(state.scheduler)
    set_rng_states(state.rng)
    if state.global_batch != d.world * cfg.train.micro_batch * cfg.train.grad_accum:
        print("warning: the global batch differs from the checkpoint's; the data order changes", flush=True)
    if state.seed != cfg.train.seed:
        print(f"warning: train.seed={cfg.train.seed} differs from the checkpoint's {state.seed}: the data order changes "
              f"from here on (resume with train.seed={state.seed} to keep it)", flush=True)


VAL_CHANGED = ": the validation split changed, so val loss from here on does not compare with before"


def data_changes(before: dict | None, now: dict | None, path: str) -> str | None:
    """A warning when the data at path is not the data a checkpoint trained on (smollm.data.dataset_identity
    of both; nothing to say when either is unknown)."""
    if not before or not now or before["id"] == now["id"]:
        return None
    old, new = before["shards"], now["shards"]
    changed = sorted(f for f in old if f in new and old[f] != new[f])
    added, gone = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    what = ", ".join(f"{len(x)} shard{'s' if len(x) != 1 else ''} {verb}" for x, verb in
                     ((changed, "changed"), (added, "added"), (gone, "gone")) if x)
    val = any(f.startswith("val_") for f in changed + added + gone)
    return (f"warning: data.path {path} is not the data this run trained on ({what}; dataset {before['id']} -> "
            f"{now['id']}){VAL_CHANGED if val else ''}; training goes on with it")


# What a resumed run may change (applied to the restored optimizer and scheduler), and what it may not.
MID_RUN_KEYS = ("optim.lr", "optim.muon_lr", "optim.muon_momentum", "optim.weight_decay", "optim.betas", "optim.eps",
                "optim.grad_clip", "train.max_steps",
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
    if old.optim.kind != cfg.optim.kind:
        raise ConfigError(f"optim.kind: the checkpoint {ckpt} was trained with {old.optim.kind}, this run asks for "
                          f"{cfg.optim.kind}; a resumed run cannot change its optimizer (start a new run instead)")
    return [(k, old.get(k), cfg.get(k)) for k in MID_RUN_KEYS if old.get(k) != cfg.get(k)]


def run_dir_of(ckpt: str) -> str | None:
    """The run directory a checkpoint belongs to, or None for a loose one."""
    return run_of_checkpoint(ckpt)


def fetch_remote_run(url: str, overrides: list[str]) -> tuple[str, list[str]]:
    """--resume URL: the remote run's files and newest resumable checkpoint brought into log.out_dir=
    when given, else into the out_dir its own config names (smollm.remote.fetch_run). Returns it and
    the overrides the run goes on with: it mirrors back to url (not to the log.remote its config names,
    which is another run's copy when url is a copy), unless log.remote=... is given. Under torchrun,
    rank 0 fetches and the others take its directory, which they must see (FSDP's shared out_dir)."""
    import socket

    from smollm.training.parallel import rank0_before_group

    dest, overrides = rank0_before_group("--resume", lambda: _fetch_remote_run(url, overrides))
    if not list_checkpoints(dest):
        raise ConfigError(f"log.out_dir: {dest}, where rank 0 fetched {url}, is not visible from "
                          f"{socket.gethostname()}; with several nodes put log.out_dir on a filesystem every node mounts")
    return dest, overrides


def _fetch_remote_run(url: str, overrides: list[str]) -> tuple[str, list[str]]:
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
    mirror = given.log.remote if _overridden(overrides, "log.remote") else url
    print(f"resume: fetching {url} into {dest}; the run goes on mirroring to {mirror or 'nowhere (log.remote=)'}",
          flush=True)
    dest = fetch_run(url, dest, options)
    return dest, overrides if _overridden(overrides, "log.remote") else [*overrides, f"log.remote={url}"]


def _overridden(overrides: list[str], key: str) -> bool:
    return any(o.partition("=")[0].strip() == key for o in overrides)


def resumed_config(resume: str, config: str | None, overrides: list[str]) -> tuple[RunConfig, str]:
    """(the run config, the checkpoint) of `--resume PATH` (a run directory or a checkpoint; a bad newest
    checkpoint is warned about and passed over): the checkpoint's own config, or `config` when given,
    with the overrides on top. The run writes where it was resumed from (a copied run directory stays a
    copy), unless log.out_dir=... says otherwise."""
    import yaml

    refuse_if_locked(resume if is_run_dir(resume) else run_of_checkpoint(resume) or resume)
    ckpt = resolve_resumable(resume)
    if config is None:
        _, _, saved = load_checkpoint(ckpt)
        cfg = apply_overrides(from_dict(yaml.safe_load(saved), resume), overrides).validate()
    else:
        cfg = load_config(config, overrides)
    if not _overridden(overrides, "log.out_dir"):
        cfg.log.out_dir = run_dir_of(ckpt) or cfg.log.out_dir
    return cfg, ckpt
