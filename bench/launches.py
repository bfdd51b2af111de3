"""Kernel launches per training step, counted on the CPU: the torch path compiled against the triton
path compiled, by kind. What a GPU runs is close to this count: inductor's fusion decisions are
mostly the same on both backends, each extern op (a GEMM, attention) is one launch, and each of our
ops launches the Triton kernels counted here. It is a count, not a timing: it needs no GPU.

A step = forward with the loss, backward, fused AdamW. Counted from one profiled step after two warm
ones: inductor's kernels (cpp_fused_*, named by cpp.enable_kernel_profile), the aten ops that a
compiled graph or eager code calls outside them (GEMMs, attention, AccumulateGrad, the optimizer),
and every Triton launch (Triton's interpreter runs them here: each launch is wrapped in a profiler
range at its grid executor, so the host copies the interpreter makes inside it are not counted).

    python -m bench.launches [--preset tiny] [--layers 2] [--batch 2] [--seq 64] [--label TEXT]
        [--before OLD/launches_cpu.jsonl] [--out bench/results]
        # writes bench/results/launches_cpu.{jsonl,md}
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys

import torch

from bench.results import RESULTS_DIR, Row, cli, headlines_md, provenance_md, publish, read_rows, stamp
from smollm.config import KERNEL_CHOICES, get_preset
from smollm.kernels import register_inductor_fallbacks
from smollm.model import SmolLM

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
    register_inductor_fallbacks()  # torch < 2.13: else a deep triton-path model never compiles
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
    return {"by_kind": dict(kinds), "total": sum(kinds.values()), "triton_by_kernel": dict(triton_launches),
            "other_aten_by_name": dict(other)}


def before_rows(path: str) -> list[Row]:
    """An earlier run's own counts (not the rows it showed from a run before it), marked as before."""
    return [dataclasses.replace(r, parameters={**r.parameters, "role": "before"}) for r in read_rows(path)
            if not r.is_summary and r.parameters.get("role") != "before"]


def headlines(rows: list[Row]) -> list[str]:
    """Launches per step of each path, and against the earlier run's when there is one."""
    now = {r.parameters["kernels"]: r for r in rows if r.parameters.get("role") != "before"}
    before = {r.parameters["kernels"]: r for r in rows if r.parameters.get("role") == "before"}
    any_row = next(iter(now.values()))
    p = any_row.parameters
    out = []
    for path, r in now.items():
        was = before.get(path)
        change = f"{was.metrics['total']} -> {r.metrics['total']}" if was else f"{r.metrics['total']}"
        out.append(f"kernel launches per training step, {path} path ({p['preset']}, {p['layers']} layers, "
                   f"{p['batch']} x {p['seq']}, CPU count): {change}")
    return out


def to_markdown(rows: list[Row]) -> str:
    """The run's rows (earlier runs' first, its summary row last) as the launch table."""
    summary, shown = rows[-1], rows[:-1]
    s = summary.parameters
    label = s.get("label")
    kinds = sorted({k for r in shown for k in r.metrics["by_kind"]})
    lines = [f"# Kernel launches per training step (CPU count{', ' + label if label else ''})", "",
             provenance_md(summary), "",
             f"Preset {s['preset']} with {s['layers']} layers, micro-batch {s['batch']} x {s['seq']}, both paths "
             "under torch.compile; forward + loss + backward + fused AdamW. Counted, not timed.", ""]
    lines += headlines_md(rows)
    lines += ["| code | path | " + " | ".join(kinds) + " | total | per layer (total / layers) |",
              "|---|---|" + "---:|" * (len(kinds) + 2)]
    for r in shown:
        m = r.metrics
        lines.append(f"| {r.parameters.get('label', '')} | {r.parameters['kernels']} | "
                     + " | ".join(str(m["by_kind"].get(k, 0)) for k in kinds)
                     + f" | {m['total']} | {m['total'] / r.parameters['layers']:.1f} |")
    tri = next(r for r in shown if r.parameters.get("role") != "before" and r.parameters["kernels"] == "triton")
    lines += ["", "Triton launches of the triton path: "
              + ", ".join(f"{k} x{v}" for k, v in sorted(tri.metrics["triton_by_kernel"].items()))
              + ". A GPU adds none of the CPU's host copies: the counts above leave out what Triton's interpreter does "
              "inside a launch."]
    for r in shown:
        lines.append(f"Other aten ops of the {r.parameters['kernels']} path ({r.parameters.get('label', '')}): "
                     + (", ".join(f"{k} x{v}" for k, v in sorted(r.metrics["other_aten_by_name"].items())) or "none"))
    lines.append("")
    return "\n".join(lines)


def main(argv=None):
    p = cli(__doc__)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--label", default="", help="a note for the table (e.g. the commit measured)")
    p.add_argument("--before", default=None, help="an earlier run's launches_cpu.jsonl, shown as rows above")
    p.add_argument("--out", default=RESULTS_DIR)
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") != "1":  # smollm/kernels/__init__.py sets it only where there is no GPU
        p.error("counts are taken on the CPU through Triton's interpreter: on a machine with a GPU, run with "
                "TRITON_INTERPRET=1")
    cfg = dataclasses.replace(get_preset(args.preset), num_hidden_layers=args.layers)
    st = stamp("launches", "cpu")
    params = {"preset": args.preset, "layers": args.layers, "batch": args.batch, "seq": args.seq}
    rows = before_rows(args.before) if args.before else []
    rows += [st.row({"kernels": k, **params, "label": args.label or "this checkout"},
                    count_step(k, cfg, args.batch, args.seq)) for k in KERNEL_CHOICES]
    rows.append(st.summary(headlines(rows), **params, label=args.label))
    return publish(args.out, rows, to_markdown(rows))


if __name__ == "__main__":
    sys.exit(main())
