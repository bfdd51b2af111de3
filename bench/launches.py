"""Kernel launches per training step, counted on the CPU: the torch path compiled against the triton
path compiled, by kind. What a GPU runs is close to this count: inductor's fusion decisions are
mostly the same on both backends, each extern op (a GEMM, attention) is one launch, and each of our
ops launches the Triton kernels counted here. It is a count, not a timing: it needs no GPU.

A step = forward with the loss, backward, fused AdamW. Counted from one profiled step after two warm
ones: inductor's kernels (cpp_fused_*, named by cpp.enable_kernel_profile), the aten ops that a
compiled graph or eager code calls outside them (GEMMs, attention, AccumulateGrad, the optimizer),
and every Triton launch (Triton's interpreter runs them here: each launch is wrapped in a profiler
range at its grid executor, so the host copies the interpreter makes inside it are not counted).

    python bench/launches.py [--preset tiny] [--layers 2] [--batch 2] [--seq 64] [--label TEXT]
        [--before OLD/launches_cpu.json] [--out bench/results]
        # writes bench/results/launches_cpu.{md,json}
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import sys

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.results_io import write_results  # noqa: E402
from smollm.config import KERNEL_CHOICES, get_preset  # noqa: E402
from smollm.model import SmolLM  # noqa: E402

# Ops that launch nothing (metadata, views, allocation).
NO_LAUNCH = {"aten::view", "aten::as_strided", "aten::reshape", "aten::_reshape_alias", "aten::empty",
             "aten::empty_strided", "aten::empty_like", "aten::t", "aten::transpose", "aten::permute", "aten::expand",
             "aten::slice", "aten::select", "aten::unsqueeze", "aten::squeeze", "aten::alias", "aten::detach",
             "aten::lift_fresh", "aten::resolve_conj", "aten::resolve_neg", "aten::split", "aten::chunk",
             "aten::unbind", "aten::split_with_sizes", "aten::_unsafe_view", "aten::result_type", "aten::is_nonzero",
             "aten::set_", "aten::resize_", "aten::new_empty", "aten::new_empty_strided", "aten::contiguous",
             "aten::promote_types", "aten::to"}  # aten::to launches only through its aten::_to_copy


def kind(name: str) -> str | None:
    """The launch kind of a profiler event at the outermost level, or None if it launches nothing."""
    if name.startswith("triton_launch::"):
        return "our Triton kernels"
    if "cpp_fused" in name or "triton_" in name:
        return "inductor kernels"
    if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm"):
        return "GEMMs"
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention"
    if "adam" in name:
        return "optimizer"
    if name.startswith("smollm::"):
        return None  # our ops: their Triton launches are counted one by one
    if name.startswith("aten::") and name not in NO_LAUNCH:
        return "other aten ops"
    return None


def launch_events(events) -> list[tuple[str, str]]:
    """(kind, name) of the outermost launching event of each call chain (a launch inside another
    counts once)."""
    out = []
    for e in events:
        k = kind(e.name)
        if k is None:
            continue
        p, inside = e.cpu_parent, False
        while p is not None:
            if kind(p.name) is not None:
                inside = True
                break
            p = p.cpu_parent
        if not inside:
            out.append((k, e.name))
    return out


def count_step(kernels: str, cfg, batch: int, seq: int) -> dict:
    import torch._inductor.config as inductor_config
    from torch.profiler import ProfilerActivity, profile
    from triton.runtime.interpreter import GridExecutor

    inductor_config.cpp.enable_kernel_profile = True
    torch.manual_seed(0)
    model = SmolLM(cfg, kernels=kernels)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    fwd = torch.compile(model)
    x = torch.randint(0, cfg.vocab_size, (batch, seq + 1))

    def step():
        fwd(x[:, :-1], x[:, 1:]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    step()
    triton_launches = collections.Counter()
    real_call = GridExecutor.__call__

    def counted(self, *args, **kw):
        # A profiler range around the launch: the host copies the interpreter makes inside it are
        # part of this one launch, not launches of their own.
        triton_launches[self.fn.__name__] += 1
        with torch.profiler.record_function(f"triton_launch::{self.fn.__name__}"):
            return real_call(self, *args, **kw)

    GridExecutor.__call__ = counted
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
    finally:
        GridExecutor.__call__ = real_call
    launches = launch_events(prof.events())
    kinds = collections.Counter(k for k, _ in launches)
    other = collections.Counter(n for k, n in launches if k == "other aten ops")
    return {"kernels": kernels, "by_kind": dict(kinds), "total": sum(kinds.values()),
            "triton_by_kernel": dict(triton_launches), "other_aten_by_name": dict(other)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--label", default="", help="a note for the table (e.g. the commit measured)")
    p.add_argument("--before", default=None, help="an earlier run's launches_cpu.json, shown as rows above")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") != "1":  # kernels/__init__.py sets it only where there is no GPU
        p.error("counts are taken on the CPU through Triton's interpreter: on a machine with a GPU, run with "
                "TRITON_INTERPRET=1")
    cfg = dataclasses.replace(get_preset(args.preset), num_hidden_layers=args.layers)
    rows = [count_step(k, cfg, args.batch, args.seq) for k in KERNEL_CHOICES]
    for r in rows:
        r["label"] = args.label or "this checkout"
    before = []
    if args.before:
        with open(args.before) as f:
            before = json.load(f)["rows"]
    kinds = sorted({k for r in before + rows for k in r["by_kind"]})
    lines = [f"# Kernel launches per training step (CPU count{', ' + args.label if args.label else ''})", "",
             f"Preset {args.preset} with {args.layers} layers, micro-batch {args.batch} x {args.seq}, both paths "
             "under torch.compile; forward + loss + backward + fused AdamW. Counted, not timed.", "",
             "| code | path | " + " | ".join(kinds) + " | total | per layer (total / layers) |",
             "|---|---|" + "---:|" * (len(kinds) + 2)]
    for r in before + rows:
        lines.append(f"| {r.get('label', '')} | {r['kernels']} | " + " | ".join(str(r["by_kind"].get(k, 0)) for k in kinds)
                     + f" | {r['total']} | {r['total'] / args.layers:.1f} |")
    tri = rows[1]["triton_by_kernel"]
    lines += ["", "Triton launches of the triton path: " + ", ".join(f"{k} x{v}" for k, v in sorted(tri.items()))
              + ". A GPU adds none of the CPU's host copies: the counts above leave out what Triton's interpreter does "
              "inside a launch."]
    for r in before + rows:
        lines.append(f"Other aten ops of the {r['kernels']} path ({r.get('label', '')}): "
                     + (", ".join(f"{k} x{v}" for k, v in sorted(r["other_aten_by_name"].items())) or "none"))
    lines.append("")
    md = "\n".join(lines)
    summary = {"preset": args.preset, "layers": args.layers, "batch": args.batch, "seq": args.seq,
               "label": args.label, "rows": rows, "before": before}
    write_results(args.out, "launches_cpu", {"md": md, "json": json.dumps(summary, indent=1)})
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
