"""The training loop: `python train.py --config configs/tiny.yaml [section.key=value ...]`.

One process, or one per GPU under torchrun (DistributedDataParallel; rank 0 writes checkpoints and
logs). Each optimizer step takes grad_accum micro-batches per rank; the batch of step s depends only
on (seed, s, rank), so a resumed run sees exactly the batches it would have seen.

setup() builds a Trainer (model, optimizer, scheduler, data, log, progress bar), restored from a
checkpoint's TrainerState when resuming; train() is the loop over its steps, with logging,
evaluation and checkpoints as methods of the Trainer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from tqdm import tqdm

from smollm import cli
from smollm.checkpoint import (TrainerState, list_checkpoints, latest_checkpoint, load_checkpoint, resolve_resumable,
                               rng_states, save_checkpoint, set_rng_states)
from smollm.data import BatchLoader, ShardError, TokenWindows, read_meta
from smollm.errors import error_line
from smollm.files import SourceNotFound, atomic_write_text
from smollm.kernels import register_inductor_fallbacks
from smollm.metrics import Console, Eta, MetricsLog, format_duration, mfu, peak_memory_mb
from smollm.model import SmolLM
from smollm.runs import CHECKPOINTS, CONFIG, TMP_PREFIX, Run, acquire_lock, release_lock
from smollm.samples import add_samples, continuations, truncate_samples_after
from smollm.schedule import lr_factor
from smollm.train_config import ConfigError, RunConfig, ScheduleSection, apply_overrides, from_dict, load_config
from smollm.weights import load_state_checked

IGNORE_INDEX = -100
EVAL_SEED = 1_000_003  # the validation windows: the same every evaluation, whatever the run's seed


class NonFiniteLoss(RuntimeError):
    pass


# ------------------------------------------------------------------------------ processes --

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str) -> Dist:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them this is a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and device_pref != "cpu"
        dist.init_process_group("nccl" if use_nccl else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(pref: str, d: Dist) -> torch.device:
    if pref == "auto":
        pref = f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(pref)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: {pref!r} asked for, but no CUDA GPU is available")
        torch.cuda.set_device(device)
    return device


def ran_dtype(cfg: RunConfig, device: torch.device) -> str:
    """The dtype the forward runs in on `device`: train.dtype on a GPU; on a CPU fp32, unless
    train.cpu_autocast. setup() records it as the run's train.dtype (config.yaml says what ran)."""
    if device.type == "cuda":
        return cfg.train.dtype
    return "bf16" if device.type == "cpu" and cfg.train.cpu_autocast else "fp32"


def autocast(device: torch.device, cfg: RunConfig):
    if ran_dtype(cfg, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------ pieces --

def make_optimizer(model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (the tied embedding included) and none on norm weights."""
    o = cfg.optim
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    # Fused AdamW (CPU and CUDA) by default: besides being faster, it can skip a step on the device
    # (found_inf), which lets NonFiniteGuard work without a host sync.
    fused = o.fused != "false"
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=fused)


def forward_backward(model, micro: list[tuple[torch.Tensor, torch.Tensor]], ddp=None, world: int = 1,
                     amp=contextlib.nullcontext) -> torch.Tensor:
    """Accumulate the gradient of the step's loss: the mean over every valid target of the step (all
    micro-batches, all ranks), whatever the split. Each micro-batch's mean is weighted by its share
    of the valid targets; DDP averages over ranks, hence the factor world. Returns this rank's share
    of the step's loss (the step's loss itself when world == 1)."""
    counts = torch.stack([(y != IGNORE_INDEX).sum() for _, y in micro]).float()  # (M,)
    total = counts.sum()
    if world > 1:
        dist.all_reduce(total)
    weights = counts * world / total
    loss_sum = torch.zeros((), device=counts.device)
    for i, (x, y) in enumerate(micro):
        sync = ddp.no_sync() if ddp is not None and i < len(micro) - 1 else contextlib.nullcontext()
        with sync:
            with amp():
                loss = model(x, y) * weights[i]
            loss.backward()
        loss_sum += loss.detach().float()
    return loss_sum / world


class NonFiniteGuard:
    """Catches a non-finite loss or gradient norm without a host sync: the flag lives on the device,
    the fused optimizer skips its update while it is set (AdamW's found_inf, as GradScaler uses it),
    so no non-finite step ever changes the weights, and the host reads the flag only at the steps
    that sync anyway (log, eval, checkpoint, stop)."""

    def __init__(self, device: torch.device, run_dir: str):
        self.run_dir = run_dir
        self.first_bad = torch.zeros((), dtype=torch.int64, device=device)  # step of the first bad one, 0: none
        self.loss = torch.zeros((), device=device)
        self.gnorm = torch.zeros((), device=device)

    def update(self, step: int, loss: torch.Tensor, gnorm: torch.Tensor) -> torch.Tensor:
        """Record step's loss and gradient norm; returns found_inf (1.0 once any step was bad)."""
        new = ~(torch.isfinite(loss) & torch.isfinite(gnorm)) & (self.first_bad == 0)
        self.first_bad = torch.where(new, step, self.first_bad)
        self.loss = torch.where(new, loss.float(), self.loss)
        self.gnorm = torch.where(new, gnorm.float(), self.gnorm)
        return (self.first_bad > 0).float()

    def check(self) -> None:
        step = int(self.first_bad)  # the host sync
        if step:
            raise NonFiniteLoss(
                f"non-finite loss ({self.loss.item()}) or gradient norm ({self.gnorm.item()}) at step {step}; the "
                f"weights were not updated from then on. Last good checkpoint: {latest_checkpoint(self.run_dir) or 'none yet'}. "
                f"Try a lower optim.lr, then --resume from it.")


def optimizer_step(fwd, model, opt, micro, guard: NonFiniteGuard, step: int, grad_clip: float, ddp=None,
                   world: int = 1, amp=contextlib.nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    """Step `step` (1-based): forward/backward over the micro-batches, clipping, AdamW. No host sync
    (tests/test_train.py counts them): returns the loss and the gradient norm as device tensors."""
    loss = forward_backward(fwd, micro, ddp, world, amp)
    if grad_clip > 0:
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    else:
        gnorm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    if world > 1:
        dist.all_reduce(loss)
    found_inf = guard.update(step, loss, gnorm)
    if opt.defaults.get("fused"):
        opt.found_inf = found_inf
    else:  # unfused AdamW cannot skip on the device: read the flag now (a sync per step)
        guard.check()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss, gnorm


def memory_floor(cfg: RunConfig, device: torch.device) -> int:
    """Bytes that a training step needs at the least: the fp32 weights and AdamW's two moments (12
    bytes a parameter, kept from step to step; the gradients come and go), one saved activation of
    the residual stream per layer, and, on the torch path, the (micro_batch x seq_len, vocab)
    log-probabilities and their gradient, alive together in the backward (the Triton path's fused
    loss holds one chunk of them). A lower bound: a step over it cannot fit; one under it may still
    not."""
    m = cfg.model_config()
    tokens = cfg.train.micro_batch * cfg.data.seq_len
    act = 2 if ran_dtype(cfg, device) == "bf16" else 4  # bytes an activation element
    logits = 0 if cfg.model.kernels == "triton" else 2 * tokens * m.vocab_size * act
    return 12 * m.n_params + tokens * m.hidden_size * m.num_hidden_layers * act + logits


def device_memory(device: torch.device) -> int | None:
    """All the memory of the device (the host's RAM for a CPU), or None where unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu" and hasattr(os, "sysconf"):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def _too_big(cfg: RunConfig, device: torch.device, why: str) -> ConfigError:
    return ConfigError(f"train.micro_batch={cfg.train.micro_batch} x data.seq_len={cfg.data.seq_len} does not fit in "
                       f"memory on {device} ({why}); lower train.micro_batch (and raise train.grad_accum)")


def check_fits(cfg: RunConfig, device: torch.device) -> None:
    """Fail at once, not after minutes of swapping, when a step cannot fit in the device's memory."""
    need, have = memory_floor(cfg, device), device_memory(device)
    if have is not None and need > have:
        raise _too_big(cfg, device, f"a step needs at least {need / 2 ** 30:,.1f} GiB, the device has "
                                    f"{have / 2 ** 30:,.1f} GiB")


@contextlib.contextmanager
def out_of_memory_is_config_error(cfg: RunConfig, device: torch.device):
    """An allocation that fails inside (a batch bigger than what check_fits could rule out) becomes a
    one-line ConfigError naming the micro-batch; other errors pass through."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        text = str(e).lower()
        if not isinstance(e, (torch.OutOfMemoryError, MemoryError)) and not any(
                m in text for m in ("out of memory", "not enough memory", "can't allocate memory")):
            raise
        raise _too_big(cfg, device, "an allocation failed") from None


@torch.no_grad()
def validation_loss(model, windows: TokenWindows, cfg: RunConfig, device: torch.device) -> float:
    """Mean loss over the same eval_batches x micro_batch validation windows every time."""
    batch = min(cfg.train.micro_batch, windows.n_windows)
    total, count = 0.0, 0
    for i in range(cfg.log.eval_batches):
        with out_of_memory_is_config_error(cfg, device):
            b = windows.get_batch(EVAL_SEED, i, batch)
            x, y = b.x.to(device), b.y.to(device)  # (batch, T)
            with autocast(device, cfg):
                loss = model(x, y)
        n = int((y != IGNORE_INDEX).sum())
        total += float(loss) * n
        count += n
    return total / count


def ensure_dataset(cfg: RunConfig) -> dict:
    """The shards at data.path; prepared first (from data.source) when there are none yet. A finished
    dataset is used as it is: where data.source, data.tokens or data.val_fraction say otherwise, a
    note says so (they are what a new preparation would use)."""
    from smollm.prepare import parse_count, prepare

    path = cfg.data.path
    budget = parse_count(cfg.data.tokens) if cfg.data.tokens else None
    if not (os.path.isfile(os.path.join(path, "meta.json")) and read_meta(path).get("complete")):
        print(f"data: no finished dataset at {path}; preparing it from {cfg.data.source}", flush=True)
        return prepare(cfg.data.source, path, tokenizer_name=cfg.data.tokenizer, val_fraction=cfg.data.val_fraction,
                       max_tokens=budget)
    meta = read_meta(path)
    asked = [("data.source", "source_arg", cfg.data.source), ("data.tokens", "max_tokens", budget),
             ("data.val_fraction", "val_fraction", cfg.data.val_fraction)]  # (run config, meta.json, value)
    differ = [f"{key}={_null(meta[field])} (this run: {_null(want)})" for key, field, want in asked
              if field in meta and meta[field] != want]
    if differ:
        print(f"data: using the finished dataset at {path}, made with {', '.join(differ)}; to prepare one with "
              f"this run's values, point data.path at a new directory", flush=True)
    return meta


def _null(value) -> str:
    return "null" if value is None else str(value)


class StopSignal:
    """SIGTERM/SIGINT ask for a clean stop: the step finishes, a checkpoint is written, exit 0. A
    second SIGINT interrupts at once."""

    def __init__(self):
        self.requested = None
        self._old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        if signum == signal.SIGINT:
            print("\nstopping after this step (Ctrl-C again to abort without a checkpoint)", file=sys.stderr, flush=True)
        else:
            print(f"\n{self.requested}: stopping after this step, with a checkpoint", file=sys.stderr, flush=True)

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ------------------------------------------------------------------------------ setup --

def _first_missing(path: str) -> str | None:
    """The outermost directory of `path` that does not exist yet (what makedirs will create)."""
    path, missing = os.path.abspath(path), None
    while not os.path.exists(path):
        missing, path = path, os.path.dirname(path)
    return missing


def remove_created_dirs(run_dir: str, top: str | None) -> None:
    """After a failed start: the directories from run_dir up to `top` that this start created, if empty."""
    if top is None:
        return
    path = os.path.abspath(run_dir)
    while path == top or path.startswith(top + os.sep):
        try:
            os.rmdir(path)  # only when empty
        except OSError:
            return
        path = os.path.dirname(path)


def remove_checkpoint_leftovers(run: Run) -> None:
    """The temporary entries (.tmp-*) a kill mid-checkpoint left in <run>/checkpoints/."""
    root = run.checkpoints
    if not os.path.isdir(root):
        return
    names = sorted(n for n in os.listdir(root) if n.startswith(TMP_PREFIX))
    for name in names:
        path = os.path.join(root, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    if names:
        print(f"note: removed {len(names)} unfinished checkpoint temporar{'y' if len(names) == 1 else 'ies'} "
              f"left in {root} by an interrupted run: {', '.join(names)}", flush=True)


def start_run_dir(cfg: RunConfig, d: Dist, resume: str | None) -> tuple[Run, str | None]:
    """The run directory (locked by rank 0: smollm.runs.acquire_lock) and its dataset, made ready by
    rank 0 while the other ranks wait. Also returns the outermost directory this start created (None:
    none), removed again if the start fails while it is empty."""
    run = Run(cfg.log.out_dir)
    created = None
    if d.main:
        if resume is None and list_checkpoints(run.path):
            raise FileExistsError(f"{run.path} already holds a run with checkpoints; continue it with --resume, "
                                  f"or choose another log.out_dir=...")
        created = _first_missing(run.path)
        os.makedirs(run.path, exist_ok=True)
        try:
            acquire_lock(run.path)
        except BaseException:
            remove_created_dirs(run.path, created)
            raise
        try:
            remove_checkpoint_leftovers(run)
            ensure_dataset(cfg)
        except BaseException:
            release_lock(run.path)
            remove_created_dirs(run.path, created)
            raise
    if d.world > 1:
        dist.barrier()
    return run, created


def open_data(cfg: RunConfig, d: Dist) -> tuple[TokenWindows, TokenWindows | None]:
    """The training and validation windows of data.path (None for validation when it has no split)."""
    meta, vocab_size = read_meta(cfg.data.path), cfg.model_config().vocab_size
    if meta["vocab_size"] > vocab_size:
        raise ConfigError(f"data.path: {cfg.data.path} has token ids up to {meta['vocab_size'] - 1}, but the model's "
                          f"vocab_size is {vocab_size}")
    train_windows = TokenWindows(cfg.data.path, "train", cfg.data.seq_len, vocab_size)
    try:
        val_windows = TokenWindows(cfg.data.path, "val", cfg.data.seq_len, vocab_size)
    except ShardError as e:
        val_windows = None
        if d.main:
            print(f"warning: no validation loss for this run ({e})", flush=True)
    return train_windows, val_windows


def load_run_tokenizer(cfg: RunConfig):
    """data.tokenizer, which the samples are decoded with: it must be the one data.path was prepared with."""
    from smollm.prepare import tokenizer_fingerprint
    from smollm.tokenizer import load_tokenizer

    meta = read_meta(cfg.data.path)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    if meta.get("tokenizer_fingerprint") not in (None, tokenizer_fingerprint(tokenizer)):
        raise ConfigError(f"data.tokenizer: {tokenizer.name_or_path!r} is not the tokenizer {cfg.data.path} was "
                          f"prepared with ({meta.get('tokenizer')!r}); samples would decode to nonsense")
    return tokenizer


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


def apply_mid_run_settings(opt, sched, cfg: RunConfig) -> None:
    """cfg's optimizer settings and schedule over a restored optimizer and scheduler: the peak LR,
    betas, eps and weight decay of each group, and the LR of the next step on cfg's schedule."""
    o = cfg.optim
    for i, group in enumerate(opt.param_groups):
        group["initial_lr"] = o.lr
        group["betas"] = tuple(o.betas)
        group["eps"] = o.eps
        if i == 0:  # the decayed matrices; norm weights (group 1) never decay
            group["weight_decay"] = o.weight_decay
    sched.base_lrs = [o.lr] * len(opt.param_groups)
    lrs = [base * lmbda(sched.last_epoch) for base, lmbda in zip(sched.base_lrs, sched.lr_lambdas)]
    for group, lr in zip(opt.param_groups, lrs):
        group["lr"] = lr
    sched._last_lr = lrs


def wrap(model: SmolLM, cfg: RunConfig, d: Dist, device: torch.device):
    """(what a step calls, the DDP wrapper or None): DDP over several processes, then torch.compile."""
    ddp, fwd = None, model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = fwd = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.model.compile:
        register_inductor_fallbacks()  # torch < 2.13: else a deep triton-path model never compiles
        fwd = torch.compile(fwd)
    return fwd, ddp


def open_log(cfg: RunConfig, run: Run, step: int) -> MetricsLog:
    """metrics.jsonl and the samples cut back to `step` (a resumed run writes what came after its
    checkpoint again), and config.yaml of this start."""
    log = MetricsLog(run.path, cfg.log.tensorboard)
    log.truncate_after(step)
    truncate_samples_after(run.path, step, run.title)
    atomic_write_text(run.config, cfg.to_yaml())
    return log


def banner(cfg: RunConfig, run: Run, d: Dist, device: torch.device, n_params: int, resumed: str | None,
           step: int) -> str:
    """The run's first console line: the model, where it runs, the batch."""
    T, B, A = cfg.data.seq_len, cfg.train.micro_batch, cfg.train.grad_accum
    return (f"run {run.path}: {n_params:,} parameters, {cfg.model.kernels} kernels"
            f"{', compiled' if cfg.model.compile else ''}, {device}, {d.world} process(es); "
            f"{B} x {A} x {d.world} sequences of {T} per step = {B * A * d.world * T:,} tokens"
            + (f"; resumed from {resumed} at step {step}" if resumed else ""))


# ------------------------------------------------------------------------------ the run --

@dataclass
class Meter:
    """What the next log line reports, gathered since the last one: steps, their summed loss (on the
    device: adding to it costs no host sync) and the time spent training (evaluations and
    checkpoints left out)."""

    loss_sum: torch.Tensor  # ()
    steps: int = 0
    busy: float = 0.0

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss
        self.steps += 1

    def mean(self) -> float:
        """The mean loss of the steps since the last log line (a host sync)."""
        return self.loss_sum.item() / self.steps

    def reset(self) -> None:
        self.loss_sum.zero_()
        self.steps, self.busy = 0, 0.0


@dataclass
class Trainer:
    """One process's part of a run, built by setup(). Every rank steps; rank 0 alone (d.main) has a
    tokenizer and a metrics log, evaluates and writes checkpoints."""

    cfg: RunConfig
    run: Run
    d: Dist
    device: torch.device
    model: SmolLM
    fwd: torch.nn.Module  # what a step calls: the model, under DDP and/or compiled
    ddp: torch.nn.Module | None
    opt: torch.optim.AdamW
    sched: torch.optim.lr_scheduler.LambdaLR
    loader: BatchLoader
    val_windows: TokenWindows | None
    tokenizer: object | None
    log: MetricsLog | None
    guard: NonFiniteGuard
    stopper: StopSignal
    bar: tqdm
    console: Console
    eta: Eta  # the time left to train.max_steps, in every log line (with or without the bar)
    uploader: object | None = None  # smollm.remote.Uploader of log.remote (rank 0)
    step: int = 0  # optimizer steps done
    tokens: int = 0
    aborted: bool = False  # by a second Ctrl-C
    # The training loss a run reports (metrics.jsonl, checkpoint.json, samples.md): the mean over the
    # steps since the previous log line, as of the latest step the host read.
    last_loss: float | None = None
    last_val: tuple[int, float] | None = None  # (step, loss) of the latest evaluation

    def amp(self):
        """The autocast context of one micro-batch's forward."""
        return autocast(self.device, self.cfg)

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.train.micro_batch * self.cfg.train.grad_accum * self.d.world * self.cfg.data.seq_len

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimizer step on the next batch: (loss, gradient norm) on the device, and its LR."""
        B, A = self.cfg.train.micro_batch, self.cfg.train.grad_accum
        block = next(self.loader)  # (A * B, T)
        micro = [(block.x[i * B:(i + 1) * B], block.y[i * B:(i + 1) * B]) for i in range(A)]
        lr = self.sched.get_last_lr()[0]
        with out_of_memory_is_config_error(self.cfg, self.device):
            loss, gnorm = optimizer_step(self.fwd, self.model, self.opt, micro, self.guard, self.step + 1,
                                         self.cfg.optim.grad_clip, self.ddp, self.d.world, self.amp)
        self.sched.step()
        self.step += 1
        self.tokens += self.tokens_per_step
        self.eta.stepped(self.step)
        self.bar.update(1)
        return loss, gnorm, lr

    def stop_requested(self, sync_step: bool) -> str | None:
        """The signal that asked to stop after this step, or None. Under DDP every rank must stop at
        the same step: they agree by an all-reduce, only at the steps where they sync anyway."""
        reason = self.stopper.requested
        if self.d.world == 1:
            return reason
        if not sync_step:
            return None
        flag = torch.tensor([reason is not None], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return reason or ("signal on another rank" if flag.item() else None)

    def at_step(self) -> str:
        """'step  120/300': how far the run is, at the head of each of its console lines (the
        progress bar is only on a terminal; a log file or a pipe has these lines alone)."""
        total = self.cfg.train.max_steps
        return f"step {self.step:>{len(str(total))}}/{total}"

    def log_line(self, meter: Meter, lr: float, gnorm: torch.Tensor) -> None:
        """The metrics of the steps since the last line (then meter starts over)."""
        tps = meter.steps * self.tokens_per_step / meter.busy
        u = mfu(tps, self.model.config, self.cfg.data.seq_len, self.device)
        eta = self.eta.seconds_left(self.step)
        # loss: the mean of the steps since the last line (the same as the step's with log_every 1)
        record = {"step": self.step, "tokens": self.tokens, "loss": self.last_loss, "lr": lr,
                  "grad_norm": gnorm.item(), "tokens_per_s": tps, "mfu": u, "peak_mem_mb": peak_memory_mb(self.device),
                  "seconds_per_step": meter.busy / meter.steps, "eta_s": eta}
        meter.reset()
        if not self.d.main:
            return
        self.log.write(record)
        self.bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{tps:,.0f}")
        self.console.say(f"{self.at_step()} | loss {record['loss']:.4f} | lr {lr:.2e} | grad norm "
                         f"{gnorm.item():.3f} | {tps:,.0f} tok/s | eta {format_duration(eta)}"
                         + (f" | MFU {u:.1%}" if u is not None else "") + f" | peak mem {record['peak_mem_mb']:,.0f} MB")

    def evaluate(self) -> None:
        """The validation loss, logged (rank 0: the others go on and wait for it at the next sync)."""
        if not self.d.main or self.val_windows is None:
            return
        v = validation_loss(self.model, self.val_windows, self.cfg, self.device)
        self.model.train()
        self.last_val = (self.step, v)
        self.log.write({"step": self.step, "tokens": self.tokens, "val_loss": v})
        self.console.say(f"{self.at_step()} | val loss {v:.4f}")

    def state(self) -> TrainerState:
        """What a checkpoint of this step saves besides the weights (and what --resume restores)."""
        c = self.cfg
        return TrainerState(step=self.step, tokens=self.tokens, seed=c.train.seed, world_size=self.d.world,
                            micro_batch=c.train.micro_batch, grad_accum=c.train.grad_accum,
                            optimizer=self.opt.state_dict(), scheduler=self.sched.state_dict(), rng=rng_states(),
                            last_loss=self.last_loss, last_val_loss=self.last_val)

    def save(self) -> None:
        """A checkpoint of this step, then the fixed prompts continued by its weights (rank 0)."""
        if not self.d.main:
            return
        c = self.cfg
        if os.path.isdir(self.run.checkpoint(self.step)):  # resumed from an earlier checkpoint than this one
            self.console.say(f"note: replacing {self.run.checkpoint(self.step)}, written before this run was resumed "
                             f"from an earlier step")
        path = save_checkpoint(self.run.path, self.model, self.state(), c.to_yaml(), tokenizer=self.tokenizer,
                               keep_trainer_states=c.log.keep_trainer_states)
        s = c.sample
        texts = continuations(self.model, self.tokenizer, s.prompts, s.max_new_tokens, s.temperature, s.top_k, s.seed)
        self.model.train()
        val = self.last_val[1] if self.last_val and self.last_val[0] == self.step else None
        add_samples(self.run.path, {"step": self.step, "tokens": self.tokens, "loss": self.last_loss,
                                    "val_loss": val, "prompts": s.prompts, "texts": texts}, self.run.title)
        self.console.say(f"checkpoint {path}")
        if self.uploader is not None:
            self.uploader.sync()  # in the background: the next step does not wait for it

    def summary(self, stopped: str | None) -> dict:
        return {"step": self.step, "tokens": self.tokens, "loss": self.last_loss,
                "val_loss": self.last_val[1] if self.last_val else None, "stopped": stopped, "run_dir": self.run.path}

    def close(self) -> None:
        self.loader.close()
        self.stopper.restore()
        self.bar.close()
        if self.log is not None:
            self.log.close()
        if self.uploader is not None and not self.aborted:
            self.finish_upload()
        self.console.close()
        if self.d.main:
            release_lock(self.run.path)

    def finish_upload(self) -> None:
        """The last upload pass (the final checkpoint, the run's files), awaited for log.remote_wait
        seconds at most, also after a stop by signal; what did not make it is said."""
        wait = self.cfg.log.remote_wait
        self.uploader.sync()
        missing = self.uploader.close(timeout=wait)
        url = self.cfg.log.remote
        if missing:
            self.console.say(f"warning: remote: not uploaded to {url} after waiting {wait:g} s: {', '.join(missing)} "
                             f"(they are in {self.run.checkpoints}); run train.py --resume {self.run.path} to "
                             f"upload them", err=True)
        elif self.uploader.error:
            self.console.say(f"warning: remote: the run's files are not all in {url} ({self.uploader.error})",
                             err=True)
        else:
            self.console.say(f"remote: {url} holds the run up to {_latest_name(self.run)}")


def _latest_name(run: Run) -> str:
    ckpt = latest_checkpoint(run.path)
    return os.path.basename(ckpt) if ckpt else "no checkpoint"


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
    check_fits(cfg, device)
    store = open_remote(cfg) if cfg.log.remote and d.main else None
    ckpt = resolve_resumable(cfg.log.out_dir if resume == "latest" else resume) if resume is not None else None
    saved = load_checkpoint(ckpt) if ckpt else None  # before any work: a bad --resume fails at once
    changes = resume_changes(saved[2], cfg, ckpt) if saved else []
    run, created = start_run_dir(cfg, d, resume)
    try:
        return _build(cfg, d, device, run, ckpt, saved, changes, store)
    except BaseException:
        if d.main:
            release_lock(run.path)
            remove_created_dirs(run.path, created)
        raise


def _build(cfg: RunConfig, d: Dist, device: torch.device, run: Run, ckpt: str | None, saved, changes,
           store) -> Trainer:
    train_windows, val_windows = open_data(cfg, d)
    console = Console(run.path if d.main else None)
    tokenizer = load_run_tokenizer(cfg) if d.main else None

    torch.manual_seed(cfg.train.seed)  # the initial weights, the same on every rank
    model = SmolLM(cfg.model_config(), kernels=cfg.model.kernels).to(device)
    model.train()
    opt = make_optimizer(model, cfg, device)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.train.max_steps, cfg.schedule))
    state = None
    if saved:
        weights, state, _ = saved
        restore(ckpt, weights, state, model, opt, sched, cfg, d)
        if changes:
            apply_mid_run_settings(opt, sched, cfg)
            if d.main:
                what = ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changes)
                console.say(f"resume: changed {what}; applied to the restored optimizer and schedule "
                            f"(the next step's lr is {sched.get_last_lr()[0]:.3e})")
    step = state.step if state else 0
    fwd, ddp = wrap(model, cfg, d, device)

    log = None
    if d.main:
        log = open_log(cfg, run, step)
        console.say(banner(cfg, run, d, device, model.config.n_params, ckpt, step))
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

        uploader = Uploader(run, store, cfg.log.keep_trainer_states, warn=lambda line: console.say(line, err=True))
    return Trainer(cfg=cfg, run=run, d=d, device=device, model=model, fwd=fwd, ddp=ddp, opt=opt, sched=sched,
                   loader=loader, val_windows=val_windows, tokenizer=tokenizer, log=log,
                   guard=NonFiniteGuard(device, run.path), stopper=stopper, bar=bar, console=console,
                   eta=Eta(cfg.train.max_steps), uploader=uploader, step=step,
                   tokens=state.tokens if state else 0, last_loss=state.last_loss if state else None,
                   last_val=state.last_val_loss if state else None)


def train(cfg: RunConfig, resume: str | None = None) -> dict:
    """Train the run of cfg, or resume it ("latest": from log.out_dir; or a run directory or a
    checkpoint); returns a summary. The host reads the device only at log, eval, checkpoint and
    stop steps: an ordinary step queues its work and goes on to the next."""
    t = setup(cfg, resume)
    max_steps = cfg.train.max_steps
    stopped = None
    try:
        if t.step >= max_steps:  # a finished run resumed as it is: say so rather than redo its last save
            t.console.say(f"nothing to train: the run is at step {t.step} of train.max_steps={max_steps}; "
                          f"to train on, resume with train.max_steps=N (N > {t.step})")
            return t.summary(None)
        if t.step == 0:
            t.evaluate()
        meter = Meter(torch.zeros((), device=t.device))
        while t.step < max_steps:
            t0 = time.perf_counter()
            loss, gnorm, lr = t.train_step()
            meter.add(loss)
            step, last = t.step, t.step == max_steps
            log_now = step % cfg.log.log_every == 0 or last
            eval_now = step % cfg.log.eval_every == 0 or last
            ckpt_now = step % cfg.log.ckpt_every == 0 or last
            stopped = t.stop_requested(sync_step=log_now or ckpt_now)
            if not (log_now or eval_now or ckpt_now or stopped):
                meter.busy += time.perf_counter() - t0  # no host sync: the device may still be running this step
                continue
            t.guard.check()  # the host waits for the device here, and only here
            t.last_loss = meter.mean()
            meter.busy += time.perf_counter() - t0
            if log_now:
                t.log_line(meter, lr, gnorm)
            if eval_now:
                t.evaluate()
            if ckpt_now or stopped:
                t.save()
            if stopped:
                t.console.say(f"stopped at step {step} ({stopped}); continue with --resume")
                break
        if t.d.main:
            from smollm.plot import plot_run

            t.console.say(f"loss curve: {plot_run(t.run.path)}")
    except KeyboardInterrupt:  # a second Ctrl-C: out now, without waiting for an upload either
        t.aborted = True
        raise
    finally:
        t.close()
    return t.summary(stopped)


# ------------------------------------------------------------------------------ CLI --

def default_config() -> str:
    """configs/tiny.yaml of the working directory, else the one in this checkout."""
    if os.path.isfile(cli.DEFAULT_CONFIG):
        return cli.DEFAULT_CONFIG
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), cli.DEFAULT_CONFIG)


def plot_command(args) -> int:
    """train.py plot (args: smollm.cli.plot_parser's)."""
    from smollm.plot import plot_run

    print(plot_run(args.run, args.out))
    return 0


def export_command(args) -> int:
    """train.py export (args: smollm.cli.export_parser's)."""
    from smollm.export import export_run

    from smollm.remote import is_url, upload_dir

    try:
        if is_url(args.out):
            with tempfile.TemporaryDirectory() as tmp:
                local = export_run(args.run, os.path.join(tmp, "model"), args.checkpoint)
                upload_dir(local, args.out, _saved_remote_options(args.run), overwrite=args.overwrite)
            out = args.out
        else:
            out = export_run(args.run, args.out, args.checkpoint, args.overwrite)
    except (ValueError, OSError) as e:  # a missing run or checkpoint, an unsafe or existing OUT, a bad store
        print(f"train.py export: error: {error_line(e)}", file=sys.stderr)
        return 2
    print(f"exported {out} (model.safetensors, config.json, tokenizer, README.md model card)")
    return 0


def _saved_remote_options(run_dir: str) -> dict:
    """log.remote_options of a run's config.yaml (an S3-compatible store's endpoint), else none."""
    import yaml

    try:
        with open(Run(run_dir).config) as f:
            return dict((yaml.safe_load(f) or {}).get("log", {}).get("remote_options") or {})
    except (OSError, yaml.YAMLError, AttributeError):
        return {}


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


def run_dir_of(ckpt: str) -> str | None:
    """The run directory a checkpoint belongs to (<run>/checkpoints/step_N), or None for a loose one."""
    ckpt = os.path.normpath(ckpt)
    parent = os.path.dirname(ckpt)
    if os.path.basename(parent) != CHECKPOINTS:
        return None
    return os.path.dirname(parent) or "."


def train_command(args) -> int:
    """train.py itself (args: smollm.cli.train_parser's)."""
    import yaml

    from smollm.remote import is_url

    def fail(e: BaseException, code: int) -> int:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return code

    cfg = ckpt = None
    try:
        if (args.resume not in (None, "latest") and "=" in args.resume and not os.path.exists(args.resume)
                and not is_url(args.resume)):
            raise ConfigError(f"--resume takes a run directory or checkpoint, not {args.resume!r}; put overrides "
                              f"after it (train.py --resume RUN {args.resume}), or use --resume with no value "
                              f"last (train.py {args.resume} --resume) for log.out_dir's latest checkpoint")
        if args.resume not in (None, "latest") and is_url(args.resume):
            args.resume = fetch_remote_run(args.resume, args.overrides)
        if args.resume not in (None, "latest"):
            ckpt = resolve_resumable(args.resume)
            if args.config is None:
                # The checkpoint carries the run's configuration; overrides still apply on top.
                _, _, saved = load_checkpoint(ckpt)
                cfg = apply_overrides(from_dict(yaml.safe_load(saved), args.resume), args.overrides).validate()
            else:
                cfg = load_config(args.config, args.overrides)
            # A resumed run writes where it was resumed from (a copied run dir stays a copy), unless
            # log.out_dir=... says otherwise.
            if not _overridden(args.overrides, "log.out_dir"):
                cfg.log.out_dir = run_dir_of(ckpt) or cfg.log.out_dir
        else:
            cfg = load_config(args.config or default_config(), args.overrides)
        # The checkpoint resolved above (a bad newest one already warned about and passed over).
        summary = train(cfg, resume=ckpt if args.resume not in (None, "latest") else args.resume)
    except NonFiniteLoss as e:
        return fail(e, 1)
    except SourceNotFound as e:  # the one model or tokenizer source a run names: said as its key
        print(f"error: {e.describe('data.tokenizer')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        last = latest_checkpoint(cfg.log.out_dir) if cfg is not None else None
        print(f"aborted by Ctrl-C: no checkpoint of the step in progress; the latest is {last or 'none'}",
              file=sys.stderr)
        return 130
    except (ValueError, KeyError, OSError, ShardError, yaml.YAMLError) as e:
        # ConfigError, FileExistsError (a lock held, a run dir with checkpoints), FileNotFoundError,
        # unreadable or corrupt checkpoint files (load_checkpoint: ValueError naming the file)
        return fail(e, 2)
    if summary["stopped"] is None and summary["val_loss"] is not None:
        print(f"done: step {summary['step']}, {summary['tokens']:,} tokens, val loss {summary['val_loss']:.4f}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


COMMANDS = {"train": train_command, "plot": plot_command, "export": export_command}


def run_command(command: str, args) -> int:
    """A train.py command (smollm.cli.train_args: "train", "plot" or "export") with its parsed arguments."""
    return COMMANDS[command](args)


def main(argv=None) -> int:
    return run_command(*cli.train_args(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
