"""(c) torch.profiler on one triton-path step ((b)'s compiled model, else an eager one): the most expensive
kernels and the time per op family."""

from __future__ import annotations

import re

import torch

from bench.gpu_check.plan import ESTIMATE_S
from bench.gpu_check.runner import Ctx, run_row
from bench.gpu_check.training import tf32
from bench.measure import free_memory, sync
from bench.train_step import batch, build, step_fn

# Op families by kernel (CUDA) or operator (CPU) name, lower-cased; the first rule that matches wins.
FAMILY_RULES = [
    ("rmsnorm", r"rms_?norm"),
    ("rope", r"(?<![a-z])rope(?![a-z])"),
    ("swiglu", r"swiglu"),
    ("cross-entropy", r"cross_entropy|_ce_rows"),
    ("attention", r"flash|sdpa|scaled_dot_product|efficient_attention|fmha|attention"),
    ("GEMM", r"gemm|gemv|cutlass|cublas|xmma|nvjet|(?<![a-z])(mm|addmm|bmm|baddbmm|matmul|linear)(?![a-z])"),
    ("optimizer", r"adam|foreach|multi_tensor|optimizer"),
    ("elementwise/fused", r"triton_(poi|red|per|tem)_|cpp_fused|compiledfxgraph|elementwise"),
]


def op_family(name: str) -> str:
    """The family of a profiled kernel or operator, by name:
    - our ops: names with rms_norm/rmsnorm (also add_rms_norm), rope (a word: not "properties"), swiglu,
      cross_entropy or _ce_rows (the custom ops smollm::* on a CPU, their Triton kernels on a GPU);
    - attention: flash, sdpa, scaled_dot_product, efficient_attention, fmha (before GEMM: fmha_cutlass*);
    - GEMM: gemm, gemv, cutlass, cublas, xmma, nvjet, or the word mm/addmm/bmm/baddbmm/matmul/linear
      (aten::mm, mkldnn::_linear_pointwise); a GEMM inside our cross-entropy counts as GEMM here;
    - optimizer: adam, foreach, multi_tensor, optimizer;
    - elementwise/fused: inductor's triton_poi_/triton_red_/triton_per_/triton_tem_ and cpp_fused kernels,
      eager elementwise kernels, and on a CPU a compiled graph's own time (CompiledFxGraph: its C++ kernels
      are not itemized there);
    - other: the rest (copies, memsets, launches, Python-side records)."""
    low = name.lower()
    for family, pattern in FAMILY_RULES:
        if re.search(pattern, low):
            return family
    return "other"


def summarize_profile(times: list[tuple[str, float, int]], top: int = 15) -> dict:
    """times: (name, microseconds, calls) -> the `top` most expensive with their share, and time per family."""
    total = sum(us for _, us, _ in times) or 1.0
    ranked = sorted(times, key=lambda t: -t[1])
    families: dict[str, float] = {}
    for name, us, _ in times:
        families[op_family(name)] = families.get(op_family(name), 0.0) + us
    return {"total_ms": total / 1e3,
            "top": [{"name": n[:200], "family": op_family(n), "ms": us / 1e3, "calls": c, "share": us / total}
                    for n, us, c in ranked[:top]],
            "families": {f: {"ms": us / 1e3, "share": us / total}
                         for f, us in sorted(families.items(), key=lambda kv: -kv[1])}}


def profiled_times(prof, device: torch.device) -> list[tuple[str, float, int]]:
    """(name, us, calls): each CUDA kernel's device time on a GPU; each operator's self CPU time on a CPU."""
    from torch.autograd import DeviceType

    events = prof.key_averages()
    if device.type == "cuda":
        return [(e.key, float(e.self_device_time_total), e.count) for e in events if e.device_type == DeviceType.CUDA]
    return [(e.key, float(e.self_cpu_time_total), e.count) for e in events]


def profile_step(ctx: Ctx) -> dict:
    from torch.profiler import ProfilerActivity, profile

    dev = ctx.device
    if ctx.kept is not None:
        step, x, y = ctx.kept
        what = "the compiled triton-path model of (b)"
    else:  # (b) did not leave one: eager, so nothing compiles here
        model = build("ours", "triton", ctx.cfg, dev)[0]
        step = step_fn(model, lambda m, x, y: m(x, y), False, dev, fused=True)
        x, y = batch(ctx.cfg, ctx.args.batch, ctx.args.seq, dev)
        step(x, y)  # Triton's JIT, the allocator
        what = "an eager triton-path model ((b)'s compiled one is missing)"
    sync(dev)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.gpu else [])
    with profile(activities=activities) as prof:
        step(x, y)
        sync(dev)
    return {"model": what, "metric": "CUDA kernel time" if ctx.gpu else "self CPU time per operator",
            "tokens": x.numel(), **summarize_profile(profiled_times(prof, dev))}


def section_c(ctx: Ctx) -> None:
    est = ESTIMATE_S["profile"] if ctx.kept is not None else ESTIMATE_S["profile_eager"]
    with tf32():
        run_row(ctx.rec, "c", "one triton-path step", est, lambda: profile_step(ctx), device=ctx.device)
    ctx.kept = None
    free_memory(ctx.device)
