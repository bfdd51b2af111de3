"""setup(): the Trainer of a run, from its config: processes and device, the run directory and its
dataset, the model from the seed, the optimizer and schedule, then, when resuming, the checkpoint's
state over them (smollm.training.resume), and the model wrapped for the step (parallel.parallelize)."""

from __future__ import annotations

import dataclasses
import sys

import torch
from tqdm import tqdm

from smollm.checkpoint import load_checkpoint, resolve_resumable
from smollm.data import BatchLoader, dataset_identity
from smollm.metrics import Console, Eta, read_metrics
from smollm.model import SmolLM
from smollm.remote.owner import check_owner, identity_for_start, owner_record
from smollm.runs import Run, release_lock
from smollm.samples import read_samples
from smollm.train_config import RunConfig
from smollm.training.dataset import load_run_tokenizer, open_data, ready_dataset
from smollm.training.device import GIB, MemoryEstimate, check_fits, device_memory, pick_device, ran_dtype
from smollm.training.evaluation import downstream_due, eval_items, token_bytes
from smollm.training.optimizer import apply_mid_run_settings, make_optimizer, make_scheduler
from smollm.training.parallel import Dist, check_shared_dir, from_rank0, init_distributed, is_sharded, parallelize
from smollm.training.resume import data_changes, restore, resume_changes
from smollm.training.rundir import open_log, remove_created_dirs, start_run_dir
from smollm.training.signals import StopSignal
from smollm.training.step import NonFiniteGuard
from smollm.training.trainer import Trainer


def banner(cfg: RunConfig, run: Run, d: Dist, device: torch.device, n_params: int, resumed: str | None,
           step: int) -> str:
    """The run's first console line: the model, where it runs, the batch."""
    T, B, A = cfg.data.seq_len, cfg.train.micro_batch, cfg.train.grad_accum
    return (f"run {run.path}: {n_params:,} parameters, {cfg.model.kernels} kernels"
            f"{', compiled' if cfg.model.compile else ''}, {device}, {d.world} process(es)"
            f"{f' ({cfg.parallel.strategy})' if d.world > 1 else ''}; "
            f"{B} x {A} x {d.world} sequences of {T} per step = {B * A * d.world * T:,} tokens"
            + (f"; resumed from {resumed} at step {step}" if resumed else ""))


def open_remote(cfg: RunConfig):
    """The log.remote store, checked writable now: a wrong bucket or bad credentials are one line at
    start-up, before any training."""
    from smollm.remote import check_writable, connect

    store = connect(cfg.log.remote, cfg.log.remote_options)
    check_writable(store)
    return store


def setup(cfg: RunConfig, resume: str | None) -> Trainer:
    """The Trainer of cfg's run: its dataset (prepared on first use), the model from the seed, then,
    when resuming, the checkpoint's weights, optimizer, scheduler and RNG states over it."""
    d = init_distributed(cfg.train.device)
    device = pick_device(cfg.train.device, d)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, dtype=ran_dtype(cfg, device)))
    need = check_fits(cfg, device, d.world)  # refused here, printed once the run is set up
    store = open_remote(cfg) if cfg.log.remote and d.main else None
    run, created = start_run_dir(cfg, d, resume)  # locked first: what is read below is not being written
    try:
        if d.world > 1 and cfg.parallel.strategy == "fsdp":
            check_shared_dir(run.path, d)
        ckpt = resolve_resumable(cfg.log.out_dir if resume == "latest" else resume) if resume is not None else None
        saved = load_checkpoint(ckpt) if ckpt else None  # before any work: a bad --resume fails at once
        changes = resume_changes(saved[2], cfg, ckpt) if saved else []
        run_id = identity_for_start(run.path, fresh=resume is None)
        note = check_owner(store, run_id, run.path, fresh=resume is None) if store is not None else None
        ready_dataset(cfg, d)
        return _build(cfg, d, device, run, ckpt, saved, changes, store, run_id, note, need)
    except BaseException:
        if d.main:
            release_lock(run.path)
            remove_created_dirs(run.path, created)
        raise


def _build(cfg: RunConfig, d: Dist, device: torch.device, run: Run, ckpt: str | None, saved, changes,
           store, run_id: dict, note: str | None, need: MemoryEstimate) -> Trainer:
    train_windows, val_windows = open_data(cfg, d)
    console = Console(run.path if d.main else None)
    tokenizer = load_run_tokenizer(cfg) if d.main else None

    torch.manual_seed(cfg.train.seed)  # the initial weights, the same on every rank
    model = SmolLM(cfg.model_config(), kernels=cfg.model.kernels).to(device)
    model.train()
    fwd, ddp = parallelize(model, cfg, d, device)  # first: FSDP replaces the parameters the optimizer takes
    opt = make_optimizer(model, cfg, device)
    sched = make_scheduler(opt, cfg)
    state = None
    data_id = dataset_identity(cfg.data.path)
    if saved:
        weights, state, _ = saved
        restore(ckpt, weights, state, model, opt, sched, cfg, d)
        if d.main and (line := data_changes(state.data_identity, data_id, cfg.data.path)):
            print(line, flush=True)
        if changes:
            apply_mid_run_settings(opt, sched, cfg)
            if d.main:
                what = ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changes)
                console.say(f"resume: changed {what}; applied to the restored optimizer and schedule "
                            f"(the next step's lr is {sched.get_last_lr()[0]:.3e})")
    step = state.step if state else 0

    log = None
    if d.main:
        log = open_log(cfg, run, step if saved else -1, run_id)  # a new run: no record of an earlier start
        console.say(banner(cfg, run, d, device, model.config.n_params, ckpt, step))
        have = device_memory(device)
        console.say(f"memory: a step needs an estimated {need.describe()} per process"
                    + (f", of the device's {have / GIB:,.1f} GiB" if have else ""))
        if note:
            console.say(note)
    # The bar only on a terminal: in a log file it is one endless line of carriage returns (the
    # console's lines say the same, plainly).
    bar = tqdm(total=cfg.train.max_steps, initial=step, desc="train", unit="step",
               disable=not d.main or not sys.stderr.isatty(), dynamic_ncols=True)
    stopper = StopSignal()
    loader = BatchLoader(train_windows, cfg.train.micro_batch * cfg.train.grad_accum, cfg.train.seed,
                         start_step=step, rank=d.rank, world_size=d.world, device=device)
    uploader = None
    if store is not None:
        from smollm.remote import Uploader

        uploader = Uploader(run, store, cfg.log.keep_trainer_states, warn=lambda line: console.say(line, err=True),
                            owner=owner_record(run_id, run.path))
    t = Trainer(cfg=cfg, run=run, d=d, device=device, model=model, fwd=fwd, ddp=ddp, opt=opt, sched=sched,
                   loader=loader, val_windows=val_windows, tokenizer=tokenizer, log=log,
                   guard=NonFiniteGuard(device, run.path), stopper=stopper, bar=bar, console=console,
                   eta=Eta(cfg.train.max_steps), uploader=uploader, step=step,
                   tokens=state.tokens if state else 0, last_loss=state.last_loss if state else None,
                   last_val=state.last_val_loss if state else None, data_identity=data_id, sharded=is_sharded(model))
    if d.main:
        t.token_bytes = token_bytes(tokenizer, model.config.vocab_size)
        t.eval_items, skipped = eval_items(cfg)
        if skipped:
            console.say(skipped, err=True)
    missing = bool(saved) and d.main and not any(r["step"] == step for r in read_samples(run.path))
    if t.sharded and from_rank0(missing):
        t.eval_model()  # every process gathers the weights rank 0's samples run on
    if missing:
        # A kill between the checkpoint's rename and its samples: the records an uninterrupted run has.
        console.say(f"note: {ckpt} has no samples record (the run stopped before writing it); writing it now")
        scored = [r["eval"] for r in read_metrics(run.path) if r.get("step") == step and "eval" in r]
        t.last_eval = (step, scored[-1]) if scored else None
        if downstream_due(cfg, step, checkpoint=True):
            t.benchmark()  # unless scored above
        t.write_samples()
    return t
