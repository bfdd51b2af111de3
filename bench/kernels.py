"""Kernel benchmarks at the model's shapes, side by side in one run: each op, forward and
forward+backward, as the PyTorch eager reference, the same reference under torch.compile, our
Triton kernel and Liger-Kernel's; time, achieved bandwidth (the bytes that must move / time; for the
cross-entropy, a GEMM, TFLOP/s), its share of the GPU's peak, and peak extra memory. Every row also
gets the A10G's roofline bound (bytes / 600 GB/s; for the cross-entropy the larger of that and
FLOPs / 70 TFLOP/s), the fastest any kernel could run on the reference card.

On a CPU the Triton and Liger rows are skipped (Triton's interpreter checks correctness, its timings
mean nothing), and the cross-entropy stops at --cpu-ce-tokens (the eager reference at 65,536 tokens
would need 19 GiB of logits and minutes per call).

    python bench/kernels.py [--tokens 4096 16384 65536] [--ops rmsnorm rope swiglu ce] [--dtype bf16]
        # writes bench/results/kernels_<device>.{md,json}
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import kernels as K  # noqa: E402
from bench.measure import (A10G_GB_S, device_name, peak_extra_bytes, peak_gb_s, results_name,  # noqa: E402
                           time_ms)
from bench.results_io import write_results  # noqa: E402
from smollm.metrics import PEAK_TFLOPS_BF16  # noqa: E402

D, HQ, HKV, DH, F, V, SEQ = 576, 9, 3, 64, 1536, 49152, 1024  # SmolLM2-135M; sequences of 1024 tokens
A10G_TFLOPS = dict(PEAK_TFLOPS_BF16)["A10G"]
OPS = ("rmsnorm", "rope", "swiglu", "ce")
IMPLS = ("eager", "compiled", "triton", "liger")
MiB = 2 ** 20


def make_case(op: str, tokens: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Inputs, upstream gradients and the bytes/FLOPs that any implementation must move/do."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(device, dtype)

    e = torch.finfo(dtype).bits // 8
    N = tokens
    if op == "rmsnorm":
        inputs = [rand(N, D), 1 + rand(D, scale=0.1)]
        grads = [rand(N, D)]
        fwd, bwd = 2 * N * D * e + D * e, 3 * N * D * e + D * e  # x in, y out | dy, x in, dx out (+ w, dw)
        flops = (0, 0)
    elif op == "rope":
        B = max(1, N // SEQ)
        T = N // B
        cos, sin = K.rope.rope_tables(DH, 2048, 10000.0)
        inputs = [rand(B, T, HQ, DH), rand(B, T, HKV, DH), cos[:T].to(device, dtype), sin[:T].to(device, dtype)]
        grads = [rand(B, T, HQ, DH), rand(B, T, HKV, DH)]
        table = 2 * T * DH * e
        fwd = 2 * N * (HQ + HKV) * DH * e + table  # q, k in and out
        bwd = fwd  # dq, dk in and out
        flops = (0, 0)
    elif op == "swiglu":
        inputs = [rand(N, F, scale=3.0), rand(N, F, scale=3.0)]
        grads = [rand(N, F)]
        fwd, bwd = 3 * N * F * e, 5 * N * F * e  # gate, up in, y out | dy, gate, up in, dgate, dup out
        flops = (0, 0)
    elif op == "ce":
        targets = torch.randint(0, V, (N,), generator=g).to(device)
        inputs = [rand(N, D), rand(V, D, scale=D ** -0.5), targets]
        grads = []
        fwd = N * D * e + V * D * e + N * 8  # hidden, weight, targets in
        bwd = N * D * e + V * D * e  # grad_hidden, grad_weight out
        flops = (2 * N * D * V, 4 * N * D * V)  # logits | grad_hidden and grad_weight
    else:
        raise ValueError(f"unknown op {op!r}; choose from {OPS}")
    return {"inputs": inputs, "grads": grads, "bytes": {"fwd": fwd, "fwd+bwd": fwd + bwd},
            "flops": {"fwd": flops[0], "fwd+bwd": flops[0] + flops[1]}}


def implementation(op: str, impl: str):
    """A callable over the case's inputs, or the reason this implementation cannot run here."""
    ref = {"rmsnorm": lambda x, w: K.rmsnorm.rms_norm_reference(x, w, 1e-5), "rope": K.rope.rope_reference,
           "swiglu": K.swiglu.swiglu_reference, "ce": K.cross_entropy.linear_cross_entropy_reference}[op]
    if impl == "eager":
        return ref
    if impl == "compiled":
        return torch.compile(ref)
    if impl == "triton":
        return {"rmsnorm": lambda x, w: K.rmsnorm.rms_norm(x, w, 1e-5), "rope": K.rope.rope, "swiglu": K.swiglu.swiglu,
                "ce": K.cross_entropy.linear_cross_entropy}[op]
    if impl == "liger":
        try:
            from liger_kernel.transformers import functional as LF
        except ImportError:
            return "liger-kernel is not installed"
        if op == "rope":
            # Liger's RoPE takes (B, H, T, Dh), the layout after the transpose; ours takes the
            # projections' (B, T, H, Dh). Each gets its own layout (the transposes are not timed).
            return lambda q, k, cos, sin: LF.liger_rope(q, k, cos[None], sin[None])
        return {"rmsnorm": lambda x, w: LF.liger_rms_norm(x, w, 1e-5), "swiglu": LF.liger_swiglu,
                "ce": LF.liger_fused_linear_cross_entropy}[op]
    raise ValueError(impl)


def runner(op: str, impl: str, fn, case: dict, mode: str):
    inputs, grads = case["inputs"], case["grads"]
    if op == "rope" and impl == "liger":
        inputs = [inputs[0].transpose(1, 2).contiguous(), inputs[1].transpose(1, 2).contiguous()] + inputs[2:]
        grads = [gr.transpose(1, 2).contiguous() for gr in grads]
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fn(*inputs)
        return run
    n_diff = 2  # every op's first two inputs get gradients (x, w | q, k | gate, up | hidden, weight)
    leaves = [x.detach().requires_grad_() if i < n_diff else x for i, x in enumerate(inputs)]

    def run():
        out = fn(*leaves)
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        return torch.autograd.grad(outs, leaves[:n_diff], grads or None)
    return run


def bench(ops, tokens_list, modes, dtype, device, cpu_ce_tokens):
    rows = []
    bw_peak = peak_gb_s(device)
    for op in ops:
        for tokens in tokens_list:
            case = None
            for mode in modes:
                for impl in IMPLS:
                    row = {"op": op, "mode": mode, "tokens": tokens, "impl": impl}
                    skip = None
                    if device.type == "cpu" and impl in ("triton", "liger"):
                        skip = "CPU: Triton's interpreter checks correctness; its timings mean nothing"
                    elif device.type == "cpu" and op == "ce" and tokens > cpu_ce_tokens:
                        skip = f"CPU: above --cpu-ce-tokens {cpu_ce_tokens} (eager needs {tokens * V * 6 / 2**30:.0f} GiB)"
                    fn = None if skip else implementation(op, impl)
                    if isinstance(fn, str):
                        skip, fn = fn, None
                    case = case or make_case(op, tokens, dtype, device)
                    nbytes, flops = case["bytes"][mode], case["flops"][mode]
                    row["bytes"], row["flops"] = nbytes, flops
                    row["a10g_bound_ms"] = max(nbytes / (A10G_GB_S * 1e9), flops / (A10G_TFLOPS * 1e12)) * 1e3
                    if skip:
                        row["skipped"] = skip
                    else:
                        run = runner(op, impl, fn, case, mode)
                        try:
                            row["ms"] = time_ms(run, device)
                            row["peak_extra_mib"] = peak_extra_bytes(run, device) / MiB
                        except torch.OutOfMemoryError:
                            row["skipped"] = "out of memory"
                            torch.cuda.empty_cache()
                    if "ms" in row:
                        s = row["ms"] / 1e3
                        row["gb_s"] = nbytes / s / 1e9
                        row["tflop_s"] = flops / s / 1e12 if flops else None
                        row["bw_fraction"] = row["gb_s"] / bw_peak if bw_peak else None
                    rows.append(row)
                    shown = (f"{row['ms']:9.3f} ms  {row['gb_s']:8.1f} GB/s" if "ms" in row else f"  skipped: {row['skipped']}")
                    print(f"{op:<8} {mode:<8} {tokens:>6} {impl:<9}{shown}", flush=True)
            del case
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def to_markdown(rows, device, dtype_name) -> str:
    bw_peak = peak_gb_s(device)
    eager = {(r["op"], r["mode"], r["tokens"]): r.get("ms") for r in rows if r["impl"] == "eager"}
    lines = [f"# Kernels ({device_name(device)}, {dtype_name})", "",
             "Time is the median of repeated calls; GB/s = the bytes that must move (inputs read once, outputs "
             "written once) / time; the cross-entropy is a GEMM, so its TFLOP/s is given too. Peak = extra memory "
             "allocated during the call. A10G bound = the fastest any kernel could run on the reference card "
             f"({A10G_GB_S:.0f} GB/s, {A10G_TFLOPS:.0f} bf16 TFLOP/s).", ""]
    if device.type == "cpu":
        lines += ["On this CPU the Triton and Liger rows are skipped: Triton's interpreter checks correctness "
                  "(tests/), its timings mean nothing. The A10G bound is printed for every row.", ""]
    head = "| op | pass | tokens | implementation | ms | GB/s | TFLOP/s |" + (" % of peak BW |" if bw_peak else "") + \
        " peak extra MiB | vs eager | A10G bound ms |"
    lines += [head, "|---|---|---:|---|---:|---:|---:|" + ("---:|" if bw_peak else "") + "---:|---:|---:|"]
    for r in rows:
        base = eager.get((r["op"], r["mode"], r["tokens"]))
        if "ms" in r:
            gb = f"{r['gb_s']:,.0f}" if r["gb_s"] >= 10 else f"{r['gb_s']:.2f}"
            cells = [f"{r['ms']:.3f}", gb, f"{r['tflop_s']:.2f}" if r.get("tflop_s") else "-"]
            if bw_peak:
                cells.append(f"{r['bw_fraction']:.0%}")
            cells += [f"{r['peak_extra_mib']:,.0f}", f"{base / r['ms']:.2f}x" if base else "-"]
        else:
            short = "skipped (CPU)" if r["skipped"].startswith("CPU: Triton") else f"skipped ({r['skipped']})"
            cells = [short, "", ""] + ([""] if bw_peak else []) + ["", ""]
        lines.append(f"| {r['op']} | {r['mode']} | {r['tokens']:,} | {r['impl']} | " + " | ".join(cells)
                     + f" | {r['a10g_bound_ms']:.3f} |")
    return "\n".join(lines) + "\n"


def headlines(rows, device) -> list[str]:
    """The ratios the issue asks about, from this run's rows."""
    def get(op, mode, tokens, impl):
        return next((r for r in rows if (r["op"], r["mode"], r["tokens"], r["impl"]) == (op, mode, tokens, impl)
                     and "ms" in r), None)

    out = []
    tokens = sorted({r["tokens"] for r in rows})
    mid = 16384 if 16384 in tokens else tokens[len(tokens) // 2]
    for op in ("rmsnorm", "rope", "swiglu"):
        t = get(op, "fwd+bwd", mid, "triton")
        if t and t.get("bw_fraction"):
            out.append(f"{op} forward+backward at {mid:,} tokens: {t['gb_s']:,.0f} GB/s = {t['bw_fraction']:.0%} of "
                       f"peak bandwidth (goal 80%)")
        for impl in ("compiled", "liger"):
            o = get(op, "fwd+bwd", mid, impl)
            if t and o:
                out.append(f"{op} forward+backward at {mid:,} tokens: triton {o['ms'] / t['ms']:.2f}x {impl}")
    for n in tokens:
        e, t, li = (get("ce", "fwd+bwd", n, i) for i in ("eager", "triton", "liger"))
        if e and t:
            out.append(f"fused cross-entropy at {n:,} tokens: {e['peak_extra_mib'] / t['peak_extra_mib']:.1f}x less "
                       f"peak memory than eager (goal 5x)" + (f"; {t['peak_extra_mib']:,.0f} MiB vs Liger's "
                                                              f"{li['peak_extra_mib']:,.0f} MiB" if li else ""))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--cpu-ce-tokens", type=int, default=4096)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    rows = bench(args.ops, args.tokens, args.modes, dtype, device, args.cpu_ce_tokens)
    heads = headlines(rows, device)
    md = to_markdown(rows, device, args.dtype) + "".join(f"\n- {h}" for h in heads) + ("\n" if heads else "")
    summary = {"device": device_name(device), "dtype": args.dtype, "peak_gb_s": peak_gb_s(device),
               "a10g_gb_s": A10G_GB_S, "a10g_tflops": A10G_TFLOPS, "rows": rows, "headlines": heads}
    write_results(args.out, f"kernels_{results_name(device)}", {"md": md, "json": json.dumps(summary, indent=1)})
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
