"""The training loop: `python train.py --config configs/tiny.yaml [section.key=value ...]`.

One process, or one per GPU under torchrun (DistributedDataParallel; rank 0 writes checkpoints and
logs). Each optimizer step takes grad_accum micro-batches per rank; the batch of step s depends only
on (seed, s, rank), so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from smollm.checkpoint import (list_checkpoints, latest_checkpoint, load_checkpoint, resolve_resumable, rng_states,
                               save_checkpoint, set_rng_states)
from smollm.data import BatchLoader, ShardError, TokenWindows, read_meta
from smollm.metrics import MetricsLog, mfu, peak_memory_mb
from smollm.model import SmolLM
from smollm.samples import add_samples, continuations, truncate_samples_after
from smollm.schedule import lr_factor
from smollm.train_config import ConfigError, RunConfig, apply_overrides, from_dict, load_config
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


def autocast(device: torch.device, cfg: RunConfig):
    if device.type == "cuda" and cfg.train.dtype == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and cfg.train.cpu_autocast:
        return torch.autocast("cpu", dtype=torch.bfloat16)
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


@torch.no_grad()
def evaluate(model, windows: TokenWindows, cfg: RunConfig, device: torch.device) -> float:
    """Mean loss over the same eval_batches x micro_batch validation windows every time."""
    batch = min(cfg.train.micro_batch, windows.n_windows)
    total, count = 0.0, 0
    for i in range(cfg.log.eval_batches):
        b = windows.get_batch(EVAL_SEED, i, batch)
        x, y = b.x.to(device), b.y.to(device)
        with autocast(device, cfg):
            loss = model(x, y)
        n = int((y != IGNORE_INDEX).sum())
        total += float(loss) * n
        count += n
    return total / count


def ensure_dataset(cfg: RunConfig) -> dict:
    """The shards at data.path; prepared first (from data.source) when there are none yet."""
    path = cfg.data.path
    if os.path.isfile(os.path.join(path, "meta.json")) and read_meta(path).get("complete"):
        return read_meta(path)
    from smollm.prepare import parse_count, prepare

    print(f"data: no finished dataset at {path}; preparing it from {cfg.data.source}", flush=True)
    return prepare(cfg.data.source, path, tokenizer_name=cfg.data.tokenizer, val_fraction=cfg.data.val_fraction,
                   max_tokens=parse_count(cfg.data.tokens) if cfg.data.tokens else None)


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

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ------------------------------------------------------------------------------ the run --

def train(cfg: RunConfig, resume: str | None = None, stop_at_step: int | None = None) -> dict:
    """Train (or resume) the run of cfg; returns a summary. stop_at_step: stop there as a signal
    would (a checkpoint, then return) - for tests of interrupted runs."""
    d = init_distributed(cfg.train.device)
    device = pick_device(cfg.train.device, d)
    resumed = None
    if resume is not None:
        ckpt = resolve_resumable(cfg.log.out_dir if resume == "latest" else resume)
        state, trainer_state, saved_yaml = load_checkpoint(ckpt)
        resumed = ckpt
    run_dir = cfg.log.out_dir
    if d.main:
        if resume is None and list_checkpoints(run_dir):
            raise FileExistsError(f"{run_dir} already holds a run with checkpoints; continue it with --resume, "
                                  f"or choose another log.out_dir=...")
        os.makedirs(run_dir, exist_ok=True)
        ensure_dataset(cfg)
    if d.world > 1:
        dist.barrier()

    meta = read_meta(cfg.data.path)
    mcfg = cfg.model_config()
    if meta["vocab_size"] > mcfg.vocab_size:
        raise ConfigError(f"data.path: {cfg.data.path} has token ids up to {meta['vocab_size'] - 1}, but the model's "
                          f"vocab_size is {mcfg.vocab_size}")
    T, B, A = cfg.data.seq_len, cfg.train.micro_batch, cfg.train.grad_accum
    train_windows = TokenWindows(cfg.data.path, "train", T, mcfg.vocab_size)
    try:
        val_windows = TokenWindows(cfg.data.path, "val", T, mcfg.vocab_size)
    except ShardError as e:
        val_windows = None
        if d.main:
            print(f"warning: no validation loss for this run ({e})", flush=True)
    tokenizer = None
    if d.main:
        from smollm.tokenizer import load_tokenizer

        from smollm.prepare import tokenizer_fingerprint

        tokenizer = load_tokenizer(cfg.data.tokenizer)
        if meta.get("tokenizer_fingerprint") not in (None, tokenizer_fingerprint(tokenizer)):
            raise ConfigError(f"data.tokenizer: {tokenizer.name_or_path!r} is not the tokenizer {cfg.data.path} was "
                              f"prepared with ({meta.get('tokenizer')!r}); samples would decode to nonsense")

    torch.manual_seed(cfg.train.seed)
    model = SmolLM(mcfg, kernels=cfg.model.kernels).to(device)
    model.train()
    opt = make_optimizer(model, cfg, device)
    max_steps = cfg.train.max_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, max_steps, cfg.schedule))
    step, tokens, last_loss, last_val = 0, 0, None, None
    if resumed:
        load_state_checked(model, state, resumed)
        opt.load_state_dict(trainer_state["optimizer"])
        sched.load_state_dict(trainer_state["scheduler"])
        step, tokens = trainer_state["step"], trainer_state["tokens"]
        last_loss, last_val = trainer_state.get("last_loss"), trainer_state.get("last_val_loss")
        set_rng_states(trainer_state["rng"])
        if trainer_state["world_size"] * trainer_state["micro_batch"] * trainer_state["grad_accum"] != d.world * B * A:
            print("warning: the global batch differs from the checkpoint's; the data order changes", flush=True)

    ddp = None
    fwd = model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = fwd = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.model.compile:
        fwd = torch.compile(fwd)
    amp = lambda: autocast(device, cfg)  # noqa: E731

    title = os.path.basename(os.path.abspath(run_dir))
    log = None
    if d.main:
        log = MetricsLog(run_dir, cfg.log.tensorboard)
        log.truncate_after(step)  # a resumed run writes what came after its checkpoint again
        truncate_samples_after(run_dir, step, title)
        with open(os.path.join(run_dir, "config.yaml"), "w") as f:
            f.write(cfg.to_yaml())
        print(f"run {run_dir}: {mcfg.n_params:,} parameters, {cfg.model.kernels} kernels"
              f"{', compiled' if cfg.model.compile else ''}, {device}, {d.world} process(es); "
              f"{B} x {A} x {d.world} sequences of {T} per step = {B * A * d.world * T:,} tokens"
              + (f"; resumed from {resumed} at step {step}" if resumed else ""), flush=True)

    tokens_per_step = B * A * d.world * T

    def checkpoint():
        if not d.main:
            return
        trainer_state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step,
                         "tokens": tokens, "data": {"seed": cfg.train.seed, "next_step": step},
                         "rng": rng_states(), "last_loss": last_loss, "last_val_loss": last_val,
                         "world_size": d.world, "micro_batch": B, "grad_accum": A}
        path = save_checkpoint(run_dir, model, trainer_state, cfg.to_yaml(), tokenizer=tokenizer,
                               keep_trainer_states=cfg.log.keep_trainer_states)
        texts = continuations(model, tokenizer, cfg.sample.prompts, cfg.sample.max_new_tokens,
                              cfg.sample.temperature, cfg.sample.top_k, cfg.sample.seed)
        model.train()
        add_samples(run_dir, {"step": step, "tokens": tokens, "loss": last_loss,
                              "val_loss": last_val[1] if last_val and last_val[0] == step else None,
                              "prompts": cfg.sample.prompts, "texts": texts}, title)
        bar.write(f"checkpoint {path}")

    def run_eval():
        nonlocal last_val
        if d.main and val_windows is not None:
            v = evaluate(model, val_windows, cfg, device)
            model.train()
            last_val = (step, v)
            log.write({"step": step, "tokens": tokens, "val_loss": v})
            bar.write(f"step {step:>6} | val loss {v:.4f}")

    from tqdm import tqdm

    bar = tqdm(total=max_steps, initial=step, desc="train", unit="step", disable=not d.main, dynamic_ncols=True)
    stopper = StopSignal()
    loader = BatchLoader(train_windows, B * A, cfg.train.seed, start_step=step, rank=d.rank, world_size=d.world,
                         device=device)
    stop_reason = None
    try:
        if step == 0:
            run_eval()
        # Since the last log line: training time (no eval, no checkpoint), steps, summed loss (on the device).
        busy, steps_last, loss_acc = 0.0, 0, torch.zeros((), device=device)
        guard = NonFiniteGuard(device, run_dir)
        while step < max_steps:
            t0 = time.perf_counter()
            block = next(loader)  # (A * B, T)
            micro = [(block.x[i * B:(i + 1) * B], block.y[i * B:(i + 1) * B]) for i in range(A)]
            lr = sched.get_last_lr()[0]
            loss, gnorm = optimizer_step(fwd, model, opt, micro, guard, step + 1, cfg.optim.grad_clip, ddp, d.world, amp)
            sched.step()
            step += 1
            tokens += tokens_per_step
            steps_last += 1
            loss_acc += loss
            bar.update(1)
            stop_reason = stopper.requested or ("stop_at_step" if stop_at_step == step else None)
            log_now, eval_now = step % cfg.log.log_every == 0 or step == max_steps, step % cfg.log.eval_every == 0
            ckpt_now = step % cfg.log.ckpt_every == 0 or step == max_steps
            if d.world > 1 and (log_now or ckpt_now):
                # Every rank stops at the same step; checked where the ranks sync anyway.
                flag = torch.tensor([stop_reason is not None], dtype=torch.int32, device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop_reason = stop_reason or ("signal on another rank" if flag.item() else None)
            elif d.world > 1:
                stop_reason = None
            if not (log_now or eval_now or ckpt_now or stop_reason):
                busy += time.perf_counter() - t0  # no host sync: the GPU may still be running this step
                continue
            guard.check()  # the host waits for the GPU here, and only here
            last_loss = loss.item()
            busy += time.perf_counter() - t0
            if log_now:
                tps = steps_last * tokens_per_step / busy
                u = mfu(tps, mcfg, T, device)
                # loss: the mean of the steps since the last line (the same as the step's with log_every 1)
                record = {"step": step, "tokens": tokens, "loss": loss_acc.item() / steps_last, "lr": lr,
                          "grad_norm": gnorm.item(),
                          "tokens_per_s": tps, "mfu": u, "peak_mem_mb": peak_memory_mb(device),
                          "seconds_per_step": busy / steps_last}
                busy, steps_last = 0.0, 0
                loss_acc.zero_()
                if d.main:
                    log.write(record)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{tps:,.0f}")
                    bar.write(f"step {step:>6} | loss {record['loss']:.4f} | lr {lr:.2e} | grad norm {gnorm.item():.3f} | "
                              f"{tps:,.0f} tok/s" + (f" | MFU {u:.1%}" if u is not None else "")
                              + f" | peak mem {record['peak_mem_mb']:,.0f} MB")
            if eval_now or step == max_steps:
                run_eval()
            if ckpt_now or stop_reason:
                checkpoint()
            if stop_reason:
                bar.write(f"stopped at step {step} ({stop_reason}); continue with --resume")
                break
    finally:
        loader.close()
        stopper.restore()
        bar.close()
        if log is not None:
            log.close()
    if d.main:
        from smollm.plot import plot_run

        print(f"loss curve: {plot_run(run_dir)}", flush=True)
    return {"step": step, "tokens": tokens, "loss": last_loss, "val_loss": last_val[1] if last_val else None,
            "stopped": stop_reason, "run_dir": run_dir}


# ------------------------------------------------------------------------------ CLI --

DEFAULT_CONFIG = os.path.join("configs", "tiny.yaml")


def default_config() -> str:
    """configs/tiny.yaml of the working directory, else the one in this checkout."""
    if os.path.isfile(DEFAULT_CONFIG):
        return DEFAULT_CONFIG
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), DEFAULT_CONFIG)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "plot":
        p = argparse.ArgumentParser(prog="train.py plot", description="Draw a run's loss curve (loss.png).")
        p.add_argument("run", help="run directory (holds metrics.jsonl)")
        p.add_argument("--out", default=None, help="PNG path (default: RUN/loss.png)")
        args = p.parse_args(argv[1:])
        from smollm.plot import plot_run

        print(plot_run(args.run, args.out))
        return 0
    if argv and argv[0] == "export":
        p = argparse.ArgumentParser(prog="train.py export", description="A run as a Hugging Face model directory "
                                    "with a model card written from the run (smollm/export.py).")
        p.add_argument("run", help="run directory")
        p.add_argument("out", help="output directory")
        p.add_argument("--checkpoint", default=None, help="a checkpoint of the run (default: its latest)")
        p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
        args = p.parse_args(argv[1:])
        from smollm.export import export_run

        try:
            out = export_run(args.run, args.out, args.checkpoint, args.overwrite)
        except (FileNotFoundError, FileExistsError) as e:
            print(f"train.py export: error: {e}", file=sys.stderr)
            return 2
        print(f"exported {out} (model.safetensors, config.json, tokenizer, README.md model card)")
        return 0
    p = argparse.ArgumentParser(prog="train.py", description="Pretrain SmolLM2 from scratch.",
                                epilog="overrides: section.key=value, e.g. optim.lr=1e-3 train.max_steps=200; "
                                       "other commands: train.py plot RUN, train.py export RUN OUT")
    p.add_argument("--config", default=None, help=f"YAML preset (default: {DEFAULT_CONFIG}, the offline CPU demo)")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue a run: its latest checkpoint (no value), a run directory or a checkpoint")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    args = p.parse_args(argv)
    try:
        if args.resume not in (None, "latest") and args.config is None:
            # The checkpoint carries the run's configuration; overrides still apply on top.
            import yaml

            _, _, saved = load_checkpoint(resolve_resumable(args.resume))
            cfg = apply_overrides(from_dict(yaml.safe_load(saved), args.resume), args.overrides).validate()
        else:
            cfg = load_config(args.config or default_config(), args.overrides)
        summary = train(cfg, resume=args.resume)
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ConfigError, FileExistsError, FileNotFoundError, ShardError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if summary["stopped"] is None and summary["val_loss"] is not None:
        print(f"done: step {summary['step']}, {summary['tokens']:,} tokens, val loss {summary['val_loss']:.4f}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
