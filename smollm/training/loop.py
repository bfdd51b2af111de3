"""The training loop: a run's steps, and at the steps that sync anyway its log lines, evaluations and
checkpoints. Everything else a step involves lives in the Trainer (smollm.training.trainer)."""

from __future__ import annotations

import time

import torch

from smollm.train_config import RunConfig
from smollm.training.build import setup
from smollm.training.trainer import Meter


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
            eval_now = step % cfg.log.eval_every == 0 or last or step % (cfg.eval.every or max_steps + 1) == 0
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
