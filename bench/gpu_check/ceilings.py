"""(a) The GPU's measured ceilings: a GEMM's TFLOP/s and a device copy's GB/s, each against the nominal peak."""

from __future__ import annotations

import torch

from bench.gpu_check.plan import ESTIMATE_S
from bench.gpu_check.runner import Ctx, run_row
from bench.measure import copy_gb_s, gemm_tflop_s, peak_gb_s
from smollm.metrics import peak_tflops

MiB = 2 ** 20


def section_a(ctx: Ctx) -> None:
    a, dev = ctx.args, ctx.device
    dtype = torch.bfloat16 if ctx.gpu else torch.float32  # CPUs have no fast bf16 GEMM to speak of

    def gemm():
        r = gemm_tflop_s(a.gemm_n, dtype, dev)
        nominal = peak_tflops(dev)
        return {**r, "nominal_tflop_s": nominal, "fraction_of_nominal": r["tflop_s"] / nominal if nominal else None}

    def copy():
        r = copy_gb_s(a.copy_mib * MiB, dev)
        nominal = peak_gb_s(dev)
        return {**r, "mib": a.copy_mib, "nominal_gb_s": nominal,
                "fraction_of_nominal": r["gb_s"] / nominal if nominal else None}

    g = run_row(ctx.rec, "a", f"{str(dtype).removeprefix('torch.')} GEMM {a.gemm_n}^3", ESTIMATE_S["gemm"], gemm,
                device=dev)
    ctx.gemm_tflops = g.get("tflop_s")
    c = run_row(ctx.rec, "a", f"device copy {a.copy_mib} MiB", ESTIMATE_S["copy"], copy, device=dev)
    ctx.copy_gb_s = c.get("gb_s")
