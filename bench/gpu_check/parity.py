"""(e) Correctness on this device: the fp32-output GEMM probe of the fused cross-entropy (and what its fallback
costs), then the kernel parity tests under pytest in a subprocess, or without pytest bench/parity.py's max
errors in-process."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import torch

from bench.gpu_check import runner
from bench.gpu_check.plan import ESTIMATE_S
from bench.gpu_check.runner import Ctx, run_row
from bench.measure import time_ms
from bench.results import ROOT
from smollm.kernels import cross_entropy as CE

PARITY_TESTS = ["tests/test_rmsnorm.py", "tests/test_rope.py", "tests/test_swiglu.py", "tests/test_cross_entropy.py"]
PARITY_WORKERS = 8  # pytest-xdist processes for (e) on a GPU, where installed: Triton compiles on the CPU cores


def pytest_row(ctx: Ctx) -> dict:
    tests = list(ctx.args.parity_tests)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    deselected = None
    if not runner.installed("liger_kernel"):
        cmd += ["-k", "not liger"]
        deselected = "liger-kernel is not installed: its comparison deselected"
    if ctx.gpu and runner.installed("xdist"):
        cmd += ["-n", str(PARITY_WORKERS)]
    # Run first, the tests must leave the training rows their time: at most --parity-timeout-s.
    timeout = max(1.0, min(ctx.rec.budget.left() - 5, ctx.args.parity_timeout_s))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
        out, code, timed_out = proc.stdout + proc.stderr, proc.returncode, False
    except subprocess.TimeoutExpired as exc:
        out = "".join(x.decode(errors="replace") if isinstance(x, bytes) else x for x in (exc.stdout, exc.stderr) if x)
        code, timed_out = None, True
    print(out[-6000:], flush=True)
    lines = [ln.strip("= ") for ln in out.splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    summary = lines[-1] if lines else (out.strip().splitlines() or ["(no output)"])[-1][:300]
    row = {"command": " ".join(cmd[1:]), "returncode": code, "summary": summary, "deselected": deselected}
    if timed_out:
        row["skipped"] = f"time budget: pytest stopped after {timeout:.0f} s (last: {summary})"
    elif code != 0:
        row.update(error=f"parity tests failed (exit {code}): {summary}", output_tail=out[-4000:])
    return row


def probe_row(ctx: Ctx) -> dict:
    """The fused cross-entropy accumulates grad_weight with one fp32-output GEMM per chunk where a once-per-device
    probe says that works (kernels/cross_entropy.py), else with a fallback: the product in bf16, then an fp32
    add. A failed probe is no parity failure (the fallback's numbers are tested too) but a cost, measured here
    at the training step's chunk size: each way, and a bare bf16 GEMM of the same shape as the floor."""
    dev, a = ctx.device, ctx.args
    V, D, N = ctx.cfg.vocab_size, ctx.cfg.hidden_size, a.batch * a.seq
    rows = min(CE.budget_chunk_rows(N, V, 2, CE.CHUNK_BYTES), N)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, V, generator=g).to(dev, torch.bfloat16)  # (C, V)
    h = torch.randn(rows, D, generator=g).to(dev, torch.bfloat16)  # (C, D)
    acc = torch.zeros(V, D, device=dev)  # (V, D) fp32
    ok = CE.fp32_out_gemm(dev, torch.bfloat16)
    chunks = -(-N // rows)
    row = {"probe_ok": ok, "chunk_rows": rows, "chunks_per_step": chunks, "vocab": V,
           "bf16_gemm_ms": time_ms(lambda: logits.t() @ h, dev),
           "fallback_ms": time_ms(lambda: CE.accumulate_grad_weight(acc, logits, h, fp32_out=False), dev)}
    if ok:
        row["fp32_out_ms"] = time_ms(lambda: CE.accumulate_grad_weight(acc, logits, h, fp32_out=True), dev)
    best = row.get("fp32_out_ms", row["bf16_gemm_ms"])
    row["fallback_extra_ms_per_step"] = (row["fallback_ms"] - best) * chunks
    row["uses"] = "the fp32-output GEMM" if ok else "the fallback (bf16 product + fp32 add)"
    if not ctx.gpu:
        row["note"] = "CPU: torch has no fp32-output bf16 GEMM here, the fallback is expected"
    return row


def section_e(ctx: Ctx) -> None:
    a = ctx.args
    run_row(ctx.rec, "e", "fp32-output GEMM probe", ESTIMATE_S["probe"], lambda: probe_row(ctx), device=ctx.device)
    use_pytest = a.parity == "pytest" or (a.parity == "auto" and runner.installed("pytest"))
    if use_pytest:
        run_row(ctx.rec, "e", "parity tests (pytest)", ESTIMATE_S["pytest"], lambda: pytest_row(ctx))
        return
    if a.parity == "auto":
        ctx.rec.add("e", "parity tests (pytest)", {"reason": "pytest not installed: bench/parity.py instead"},
                    "skipped")
    holder = {}

    def measure():
        from bench import parity as bench_parity  # bench/parity.py, not this module

        holder["rows"] = bench_parity.measure(a.parity_tokens, ctx.device.type)
        return {"tokens": a.parity_tokens, "rows": len(holder["rows"])}
    run_row(ctx.rec, "e", "bench/parity.py measure()", ESTIMATE_S["parity"], measure, device=ctx.device)
    by_key: dict[tuple, list] = {}
    for r in holder.get("rows", []):
        by_key.setdefault((r["op"], r["dtype"]), []).append(r)
    for (op, dtype), rs in by_key.items():
        worst = max(rs, key=lambda r: r["max_abs_err"])
        ctx.rec.add("e", f"{op} {dtype}", {"max_abs_err": worst["max_abs_err"], "worst_tensor": worst["tensor"],
                                           "reference_same_dtype_err": max(r["reference_same_dtype_err"] for r in rs),
                                           "per_tensor": {r["tensor"]: r["max_abs_err"] for r in rs}},
                    labels={"op": op, "dtype": dtype, "tokens": a.parity_tokens})
