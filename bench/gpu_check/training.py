"""(b) One training step per row of plan.TRAIN_ROWS, compiled: compile and warm-up apart from the timed steps,
tokens/s, MFU against the nominal peak and against (a)'s GEMM rate, peak memory. The triton-path model is kept
for (c)."""

from __future__ import annotations

import contextlib
import time

import torch

from bench.gpu_check import runner
from bench.gpu_check.plan import ESTIMATE_S, TRAIN_ROWS
from bench.gpu_check.runner import Ctx, run_row
from bench.measure import allocated_mib, peak_memory_mib, reset_peak_memory, sync
from bench.train_step import batch, build, step_fn
from smollm.metrics import flops_per_token, peak_tflops

CPU_TRITON = "CPU: Triton's interpreter; its timings mean nothing"


@contextlib.contextmanager
def tf32():
    """TF32 for fp32 matmuls while the training step runs, as the trainer and bench/train_step.py set it (a
    flag: nothing happens on a CPU); off again for (d) and (e), whose fp32 references must stay fp32."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def train_row(ctx: Ctx, name: str, builder: str, kernels: str | None) -> dict:
    a, dev, cfg = ctx.args, ctx.device, ctx.cfg
    base = allocated_mib(dev)  # what earlier rows keep (the triton-path model, for (c)) is not this row's
    if builder == "hf" and not runner.installed("transformers"):
        return {"skipped": "transformers is not installed"}
    built = build(builder, kernels, cfg, dev)
    if isinstance(built, str):
        return {"skipped": built}
    model, loss_fn = built
    step = step_fn(model, loss_fn, True, dev, fused=True)
    x, y = batch(cfg, a.batch, a.seq, dev)
    t0 = time.perf_counter()
    loss = step(x, y)  # dynamo + inductor compile here
    sync(dev)
    first = time.perf_counter() - t0
    for _ in range(a.warmup - 1):  # autotuning, allocator
        loss = step(x, y)
    sync(dev)
    warm = time.perf_counter() - t0
    reset_peak_memory(dev)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step(x, y)
    sync(dev)
    dt = time.perf_counter() - t0
    tps = a.batch * a.seq * a.steps / dt
    achieved = tps * flops_per_token(cfg, a.seq) / 1e12  # model TFLOP/s
    nominal = peak_tflops(dev)
    row = {"first_step_s": first, "warmup_s": warm, "warmup_steps": a.warmup, "steps": a.steps,
           "step_ms": dt / a.steps * 1e3, "tokens_per_s": tps, "model_tflop_s": achieved,
           "mfu_nominal": achieved / nominal if nominal else None,
           "mfu_measured": achieved / ctx.gemm_tflops if ctx.gemm_tflops else None,
           "peak_mib": None if base is None else peak_memory_mib(dev) - base, "loss": loss.item()}
    if kernels == "triton" and not ctx.gpu:
        row["note"] = CPU_TRITON
    if kernels == "triton":
        ctx.kept = (step, x, y)  # 135M parameters + AdamW state: kept for (c), which then compiles nothing
    return row


def section_b(ctx: Ctx) -> None:
    a = ctx.args
    labels = {"preset": a.preset, "layers": ctx.cfg.num_hidden_layers, "batch": a.batch, "seq": a.seq,
              "precision": "bf16 autocast" if ctx.gpu else "fp32", "optimizer": "AdamW(fused=True)"}
    for name, builder, kernels in TRAIN_ROWS:
        est = ESTIMATE_S["train"] if ctx.last_train_s is None else ctx.last_train_s * (1.3 if builder == "hf" else 1.0)
        with tf32():
            row = run_row(ctx.rec, "b", name, est, lambda: train_row(ctx, name, builder, kernels), labels, ctx.device,
                          cap_s=a.row_cap_s)
        if row["status"] == "ok":
            ctx.last_train_s = row["seconds"]
