"""(d) Each op forward+backward: eager, compiled reference, ours (Triton), Liger; ms, GB/s and the share of
(a)'s copy bandwidth. The ops bench/kernels.py knows, and those smollm.kernels may add (plan.EXTRA_OPS)."""

from __future__ import annotations

import torch

from bench import kernels as BK
from bench.gpu_check.plan import ESTIMATE_S, EXTRA_OPS, OPS
from bench.gpu_check.runner import Ctx, error_fields, run_row
from bench.measure import free_memory, time_ms
from smollm import kernels as K

CPU_SKIP = "CPU: interpreter timings mean nothing"


def kernel_op(name: str):
    """The function `name` from whichever of the kernels modules defines it, else None."""
    found = [getattr(m, name) for m in (K.rmsnorm, K.rope, K.swiglu, K.cross_entropy) if hasattr(m, name)]
    return found[0] if found else None


def extra_case(op: str, tokens: int, dtype: torch.dtype, device: torch.device) -> dict:
    """The ops smollm/kernels/ may add, with the bytes any implementation must move (forward + backward)."""
    g = torch.Generator().manual_seed(0)
    D, F, N = BK.D, BK.F, tokens
    e = torch.finfo(dtype).bits // 8

    def rand(*shape, scale=1.0, dt=dtype):
        return (scale * torch.randn(*shape, generator=g)).to(device, dt)

    if op == "add_rms_norm":
        # forward reads x (fp32 residual), delta (bf16), writes residual (fp32) + y (bf16); backward reads
        # d_residual (fp32), dy (bf16), residual (fp32), writes dx (fp32), d_delta (bf16)
        inputs = [rand(N, D, dt=torch.float32), rand(N, D), 1 + rand(D, scale=0.1, dt=torch.float32)]
        nbytes = (4 + e + 4 + e) * N * D + (4 + e + 4 + 4 + e) * N * D
        return {"inputs": inputs, "n_diff": 3, "bytes": nbytes, "autocast": True}
    if op == "swiglu_packed":
        # forward reads gate_up (N x 2F), writes y (N x F); backward reads dy + gate_up, writes d_gate_up
        return {"inputs": [rand(N, 2 * F, scale=3.0)], "n_diff": 1, "bytes": (3 + 5) * N * F * e, "autocast": False}
    raise ValueError(f"unknown extra op {op!r}")


def extra_implementation(op: str, impl: str):
    fused = kernel_op(op)
    ref = kernel_op(f"{op}_reference")
    if impl == "triton":
        return fused
    if impl in ("eager", "compiled"):
        if ref is None:
            return f"kernels has no {op}_reference"
        return ref if impl == "eager" else torch.compile(ref)
    return "Liger has no such fused op"


def extra_runner(fn, case: dict, device: torch.device):
    leaves = [x.detach().requires_grad_() if i < case["n_diff"] else x for i, x in enumerate(case["inputs"])]
    grads: list[torch.Tensor] = []
    amp = case["autocast"]

    def run():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = fn(*leaves)
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        if not grads:
            g = torch.Generator().manual_seed(1)
            grads.extend(torch.randn(o.shape, generator=g).to(o.device, o.dtype) for o in outs)
        return torch.autograd.grad(outs, leaves[:case["n_diff"]], grads)
    return run


def op_row(ctx: Ctx, op: str, impl: str, case: dict) -> dict:
    dev = ctx.device
    if not ctx.gpu and impl in ("triton", "liger"):
        return {"skipped": CPU_SKIP}
    if op in EXTRA_OPS:
        fn = extra_implementation(op, impl)
        nbytes = case["bytes"]
        run = None if isinstance(fn, str) else extra_runner(fn, case, dev)
    else:
        fn = BK.implementation(op, impl)
        nbytes = case["bytes"]["fwd+bwd"]
        run = None if isinstance(fn, str) else BK.runner(op, impl, fn, case, "fwd+bwd")
    if isinstance(fn, str):
        return {"skipped": fn, "bytes": nbytes}
    ms = time_ms(run, dev)
    gb_s = nbytes / (ms / 1e3) / 1e9
    row = {"ms": ms, "bytes": nbytes, "gb_s": gb_s, "copy_share": gb_s / ctx.copy_gb_s if ctx.copy_gb_s else None}
    if op == "ce":
        row["flops"] = case["flops"]["fwd+bwd"]
    return row


def section_d(ctx: Ctx) -> None:
    a, dev = ctx.args, ctx.device
    ops = a.ops or OPS + [op for op in EXTRA_OPS if kernel_op(op) is not None]
    for op in ops:
        labels = {"op": op, "tokens": a.op_tokens, "dtype": "bf16", "pass": "fwd+bwd"}
        try:  # the case is built once per op (unless no row can run); a failure (an unknown op) is an error row
            case = None
            if ctx.rec.budget.left() >= min(ESTIMATE_S[f"op_{impl}"] for impl in BK.IMPLS):
                case = (extra_case if op in EXTRA_OPS else BK.make_case)(op, a.op_tokens, torch.bfloat16, dev)
        except Exception as exc:  # noqa: BLE001
            ctx.rec.add("d", op, error_fields(exc), "error", labels)
            continue
        for impl in BK.IMPLS:
            run_row(ctx.rec, "d", f"{op}, {impl}", ESTIMATE_S[f"op_{impl}"],
                    lambda impl=impl, case=case: op_row(ctx, op, impl, case), {**labels, "impl": impl})
        del case
        free_memory(dev)
