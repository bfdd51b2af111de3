"""Kernel benchmarks at the model's shapes, side by side in one run: each op, forward and
forward+backward, as the PyTorch eager reference, the same reference under torch.compile, our
Triton kernel and Liger-Kernel's; time, achieved bandwidth (the bytes that must move / time; for the
cross-entropy, a GEMM, TFLOP/s), its share of the GPU's peak, and peak extra memory. Every row also
gets the A10G's roofline bound (bytes / A10G_GB_S; for the cross-entropy the larger of that and
FLOPs / the A10G's bf16 TFLOP/s), the fastest any kernel could run on the reference card.

On a CPU the Triton and Liger rows are skipped (Triton's interpreter checks correctness, its timings
mean nothing), and the cross-entropy stops at --cpu-ce-tokens (the eager reference holds every
logit: tokens x vocabulary values, in the input dtype and again in fp32).

    python -m bench.kernels [--tokens 4096 16384 65536] [--ops rmsnorm rope swiglu ce] [--dtype bf16]
        # writes bench/results/kernels_<device-slug>.{jsonl,md}
"""

from __future__ import annotations

import sys

import torch

from smollm import kernels as K
from bench.measure import A10G_GB_S, peak_extra_bytes, peak_gb_s, time_ms
from bench.results import RESULTS_DIR, Row, Stamp, cli, headlines_md, provenance_md, publish, stamp
from smollm.config import get_preset
from smollm.metrics import PEAK_TFLOPS_BF16

MODEL = get_preset("smollm2-135m")
D, HQ, HKV, DH = MODEL.hidden_size, MODEL.num_attention_heads, MODEL.num_key_value_heads, MODEL.head_dim
F, V = MODEL.intermediate_size, MODEL.vocab_size
SEQ = 1024  # RoPE's tokens come as sequences of this length (the training sequence length)
A10G_TFLOPS = dict(PEAK_TFLOPS_BF16)["A10G"]
OPS = ("rmsnorm", "rope", "swiglu", "ce")
IMPLS = ("eager", "compiled", "triton", "liger")
MiB = 2 ** 20
CPU_SKIP = "CPU: Triton's interpreter checks correctness; its timings mean nothing"


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
        cos, sin = K.rope.rope_tables(DH, MODEL.max_position_embeddings, MODEL.rope_theta)
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


def bench(ops, tokens_list, modes, dtype, device, cpu_ce_tokens, st: Stamp) -> list[Row]:
    rows = []
    bw_peak = peak_gb_s(device)
    dtype_name = {torch.bfloat16: "bf16", torch.float32: "fp32"}.get(dtype, str(dtype))
    for op in ops:
        for tokens in tokens_list:
            case = None
            for mode in modes:
                for impl in IMPLS:
                    params = {"op": op, "mode": mode, "tokens": tokens, "impl": impl, "dtype": dtype_name}
                    skip = None
                    if device.type == "cpu" and impl in ("triton", "liger"):
                        skip = CPU_SKIP
                    elif device.type == "cpu" and op == "ce" and tokens > cpu_ce_tokens:
                        skip = (f"CPU: above --cpu-ce-tokens {cpu_ce_tokens} "
                                f"(eager needs {tokens * V * 6 / 2**30:.0f} GiB)")
                    fn = None if skip else implementation(op, impl)
                    if isinstance(fn, str):
                        skip, fn = fn, None
                    case = case or make_case(op, tokens, dtype, device)
                    nbytes, flops = case["bytes"][mode], case["flops"][mode]
                    m = {"bytes": nbytes, "flops": flops,
                         "a10g_bound_ms": max(nbytes / (A10G_GB_S * 1e9), flops / (A10G_TFLOPS * 1e12)) * 1e3}
                    if not skip:
                        run = runner(op, impl, fn, case, mode)
                        try:
                            m["ms"] = time_ms(run, device)
                            m["peak_extra_mib"] = peak_extra_bytes(run, device) / MiB
                        except torch.OutOfMemoryError:
                            skip = "out of memory"
                            m.pop("ms", None)
                            torch.cuda.empty_cache()
                    if "ms" in m:
                        s = m["ms"] / 1e3
                        m["gb_s"] = nbytes / s / 1e9
                        m["tflop_s"] = flops / s / 1e12 if flops else None
                        m["bw_fraction"] = m["gb_s"] / bw_peak if bw_peak else None
                    rows.append(st.row(params, m, status="skipped" if skip else "ok", reason=skip))
                    shown = f"{m['ms']:9.3f} ms  {m['gb_s']:8.1f} GB/s" if "ms" in m else f"  skipped: {skip}"
                    print(f"{op:<8} {mode:<8} {tokens:>6} {impl:<9}{shown}", flush=True)
            del case
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def to_markdown(rows: list[Row]) -> str:
    """The run's rows (its summary row last) as the kernels table."""
    summary = rows[-1]
    bw_peak = summary.parameters.get("peak_gb_s")
    a10g_gb_s, a10g_tflops = summary.parameters["a10g_gb_s"], summary.parameters["a10g_tflops"]
    flat = [r.flat() for r in rows if not r.is_summary]
    eager = {(r["op"], r["mode"], r["tokens"]): r.get("ms") for r in flat if r["impl"] == "eager"}
    lines = [f"# Kernels ({summary.device}, {summary.parameters['dtype']})", "", provenance_md(summary), "",
             "Time is the median of repeated calls; GB/s = the bytes that must move (inputs read once, outputs "
             "written once) / time; the cross-entropy is a GEMM, so its TFLOP/s is given too. Peak = extra memory "
             "allocated during the call. A10G bound = the fastest any kernel could run on the reference card "
             f"({a10g_gb_s:.0f} GB/s, {a10g_tflops:.0f} bf16 TFLOP/s).", ""]
    if summary.device.startswith("cpu"):
        lines += ["On this CPU the Triton and Liger rows are skipped: Triton's interpreter checks correctness "
                  "(tests/), its timings mean nothing. The A10G bound is printed for every row.", ""]
    lines += headlines_md(rows)
    head = "| op | pass | tokens | implementation | ms | GB/s | TFLOP/s |" + (" % of peak BW |" if bw_peak else "") + \
        " peak extra MiB | vs eager | A10G bound ms |"
    lines += [head, "|---|---|---:|---|---:|---:|---:|" + ("---:|" if bw_peak else "") + "---:|---:|---:|"]
    for r in flat:
        base = eager.get((r["op"], r["mode"], r["tokens"]))
        if "ms" in r:
            gb = f"{r['gb_s']:,.0f}" if r["gb_s"] >= 10 else f"{r['gb_s']:.2f}"
            cells = [f"{r['ms']:.3f}", gb, f"{r['tflop_s']:.2f}" if r.get("tflop_s") else "-"]
            if bw_peak:
                cells.append(f"{r['bw_fraction']:.0%}")
            cells += [f"{r['peak_extra_mib']:,.0f}", f"{base / r['ms']:.2f}x" if base else "-"]
        else:
            short = "skipped (CPU)" if r["reason"].startswith("CPU: Triton") else f"skipped ({r['reason']})"
            cells = [short, "", ""] + ([""] if bw_peak else []) + ["", ""]
        lines.append(f"| {r['op']} | {r['mode']} | {r['tokens']:,} | {r['impl']} | " + " | ".join(cells)
                     + f" | {r['a10g_bound_ms']:.3f} |")
    return "\n".join(lines) + "\n"


def headlines(rows: list[Row]) -> list[str]:
    """Bandwidth against the GPU's peak, triton against the other implementations, and the fused
    cross-entropy's memory against eager's, from this run's rows."""
    flat = [r.flat() for r in rows if not r.is_summary]

    def get(op, mode, tokens, impl):
        return next((r for r in flat if (r["op"], r["mode"], r["tokens"], r["impl"]) == (op, mode, tokens, impl)
                     and "ms" in r), None)

    out = []
    tokens = sorted({r["tokens"] for r in flat})
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


def plot_panel(ax, rows: list[Row]) -> None:
    """bench/report.py's figure: forward+backward time per op and implementation at the middle size,
    with the A10G bound."""
    summary = rows[-1]
    flat = [r.flat() for r in rows if not r.is_summary]
    tokens = sorted({r["tokens"] for r in flat})
    mid = 16384 if 16384 in tokens else tokens[0]
    ops = [op for op in OPS if any(r["op"] == op and r["tokens"] == mid and "ms" in r for r in flat)]
    width = 0.8 / len(IMPLS)
    for j, impl in enumerate(IMPLS):
        xs, ys = [], []
        for k, op in enumerate(ops):
            r = next((r for r in flat if (r["op"], r["mode"], r["tokens"], r["impl"]) == (op, "fwd+bwd", mid, impl)
                      and "ms" in r), None)
            if r:
                xs.append(k + (j - 1.5) * width)
                ys.append(r["ms"])
        if xs:
            ax.bar(xs, ys, width, label=impl)
    bounds = [next(r["a10g_bound_ms"] for r in flat if (r["op"], r["mode"], r["tokens"]) == (op, "fwd+bwd", mid))
              for op in ops]
    ax.scatter(range(len(ops)), bounds, marker="_", s=900, color="black", label="A10G roofline bound")
    ax.set_xticks(range(len(ops)), ops)
    ax.set_yscale("log")
    ax.set_ylabel("ms (log scale, lower is better)")
    ax.set_title(f"kernels, forward+backward, {mid:,} tokens, {summary.parameters['dtype']}"
                 + ("\n(triton and liger: GPU only)" if summary.device.startswith("cpu") else ""))
    ax.legend(fontsize=8)


def main(argv=None):
    p = cli(__doc__)
    p.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--cpu-ce-tokens", type=int, default=4096)
    p.add_argument("--out", default=RESULTS_DIR)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    st = stamp("kernels", device)
    rows = bench(args.ops, args.tokens, args.modes, dtype, device, args.cpu_ce_tokens, st)
    rows.append(st.summary(headlines(rows), dtype=args.dtype, peak_gb_s=peak_gb_s(device), a10g_gb_s=A10G_GB_S,
                           a10g_tflops=A10G_TFLOPS))
    return publish(args.out, rows, to_markdown(rows))


if __name__ == "__main__":
    sys.exit(main())
