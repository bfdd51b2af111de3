"""The Trainer: one process's part of a run, built by smollm.training.build.setup, and what the loop
does with it: a step, a log line, an evaluation, a checkpoint with its samples, the remote copy, the
close. The loop itself: smollm.training.loop.train."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm

from smollm.checkpoint import TrainerState, latest_checkpoint, rng_states, save_checkpoint
from smollm.data import BatchLoader, TokenWindows
from smollm.metrics import Console, Eta, MetricsLog, format_duration, mfu, peak_memory_mb
from smollm.model import SmolLM
from smollm.runs import Run, release_lock
from smollm.samples import add_samples, continuations
from smollm.train_config import RunConfig
from smollm.training.device import autocast, out_of_memory_is_config_error
from smollm.training.evaluation import downstream, downstream_due, validation_loss
from smollm.training.parallel import Dist, unsharded_copy
from smollm.training.signals import StopSignal
from smollm.training.step import NonFiniteGuard, optimizer_step


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
    opt: torch.optim.Optimizer  # AdamW or MuonAdamW (optim.kind)
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
    token_bytes: torch.Tensor | None = None  # (V,) UTF-8 bytes per token id: bits per byte (rank 0)
    eval_items: dict | None = None  # eval.tasks' items (rank 0), None when there is nothing to score
    last_eval: tuple[int, dict] | None = None  # (step, eval record) of the latest downstream evaluation
    data_identity: dict | None = None  # what the checkpoints record of the data (smollm.data.dataset_identity)
    sharded: bool = False  # FSDP (parallel.strategy=fsdp on several processes): evaluations and checkpoints are collective
    _whole: tuple[int, SmolLM | None] | None = None  # (step, the unsharded copy rank 0 evaluates) while sharded

    def amp(self):
        """The autocast context of one micro-batch's forward."""
        return autocast(self.device, self.cfg)

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.train.micro_batch * self.cfg.train.grad_accum * self.d.world * self.cfg.data.seq_len

    def eval_model(self) -> SmolLM | None:
        """The weights evaluations, benchmarks and samples run on: the model itself; when sharded, every
        process calls this and rank 0 gets an unsharded copy (kept until the next step), the others None."""
        if not self.sharded:
            return self.model
        if self._whole is None or self._whole[0] != self.step:
            self._whole = None  # the last step's copy freed before the next is gathered
            self._whole = (self.step, unsharded_copy(self.model, self.device))
        return self._whole[1]

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimizer step on the next batch: (loss, gradient norm) on the device, and its LR."""
        self._whole = None
        B, A = self.cfg.train.micro_batch, self.cfg.train.grad_accum
        block = next(self.loader)  # (A * B, T)
        part = lambda t, i: None if t is None else t[i * B:(i + 1) * B]  # noqa: E731
        micro = [(part(block.x, i), part(block.y, i), part(block.docs, i)) for i in range(A)]
        lr = self.sched.get_last_lr()[-1]  # AdamW's (the norm weights', the last group), whatever optim.kind
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
        """The validation loss and bits per byte, logged, then the benchmarks when eval.every says so
        (rank 0: the others go on and wait for it at the next sync)."""
        if self.sharded:
            self.eval_model()  # every process: the gather (whatever a rank's own state says)
        if not self.d.main:
            return
        if self.val_windows is not None:
            v, bpb = validation_loss(self.eval_model(), self.val_windows, self.cfg, self.device, self.token_bytes)
            self.model.train()
            self.last_val = (self.step, v)
            self.log.write({"step": self.step, "tokens": self.tokens, "val_loss": v, "val_bpb": bpb})
            self.console.say(f"{self.at_step()} | val loss {v:.4f}" + (f" | {bpb:.4f} bits/byte" if bpb else ""))
        if downstream_due(self.cfg, self.step, checkpoint=False):
            self.benchmark()

    def benchmark(self) -> None:
        """eval.tasks scored on the weights as they are, logged (rank 0)."""
        if not self.d.main or self.eval_items is None or (self.last_eval and self.last_eval[0] == self.step):
            return
        record = downstream(self.eval_model(), self.tokenizer, self.eval_items, self.cfg, self.device)
        self.model.train()
        self.last_eval = (self.step, record)
        self.log.write({"step": self.step, "tokens": self.tokens, "eval": record})
        scores = ", ".join(f"{k} {100 * t['score']:.1f}" for k, t in record["tasks"].items())
        self.console.say(f"{self.at_step()} | eval average {100 * record['average']['score']:.1f}% ({scores}) "
                         f"in {record['seconds']:.0f} s")

    def state(self) -> TrainerState:
        """What a checkpoint of this step saves besides the weights (and what --resume restores)."""
        c = self.cfg
        return TrainerState(step=self.step, tokens=self.tokens, seed=c.train.seed, world_size=self.d.world,
                            micro_batch=c.train.micro_batch, grad_accum=c.train.grad_accum,
                            optimizer=None if self.sharded else self.opt.state_dict(), scheduler=self.sched.state_dict(), rng=rng_states(),
                            last_loss=self.last_loss, last_val_loss=self.last_val, data_identity=self.data_identity)

    def save(self) -> None:
        """A checkpoint of this step (written by rank 0; when sharded, by every process, each its own
        shards), then the fixed prompts continued by its weights (rank 0)."""
        c = self.cfg
        if self.d.main and os.path.isdir(self.run.checkpoint(self.step)):  # resumed from an earlier checkpoint
            self.console.say(f"note: replacing {self.run.checkpoint(self.step)}, written before this run was resumed "
                             f"from an earlier step")
        if self.sharded:
            path = save_checkpoint(self.run.path, self.model, self.state(), c.to_yaml(), tokenizer=self.tokenizer,
                                   keep_trainer_states=c.log.keep_trainer_states, sharded_opt=self.opt)
            self.eval_model()  # every process: the gather
        if not self.d.main:
            return
        if not self.sharded:
            path = save_checkpoint(self.run.path, self.model, self.state(), c.to_yaml(), tokenizer=self.tokenizer,
                                   keep_trainer_states=c.log.keep_trainer_states)
        if downstream_due(self.cfg, self.step, checkpoint=True):
            self.benchmark()  # before the samples record, which shows the scores beside the text
        self.write_samples()
        self.console.say(f"checkpoint {path}")
        if self.uploader is not None:
            self.uploader.sync()  # in the background: the next step does not wait for it

    def write_samples(self) -> None:
        """The samples record of this step's checkpoint: the fixed prompts continued by its weights
        (on their own generator: the training RNG is not touched)."""
        s = self.cfg.sample
        texts = continuations(self.eval_model(), self.tokenizer, s.prompts, s.max_new_tokens, s.temperature, s.top_k, s.seed)
        self.model.train()
        val = self.last_val[1] if self.last_val and self.last_val[0] == self.step else None
        record = {"step": self.step, "tokens": self.tokens, "loss": self.last_loss, "val_loss": val,
                  "prompts": s.prompts, "texts": texts}
        if self.last_eval and self.last_eval[0] == self.step:
            record["eval"] = self.last_eval[1]
        add_samples(self.run.path, record, self.run.title)

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
        if self.uploader.lost:  # said when it happened; the run's end says what it means
            self.console.say(f"warning: remote: {self.uploader.lost}; not uploaded there: {', '.join(missing)} (they "
                             f"are in {self.run.checkpoints})", err=True)
        elif missing:
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
