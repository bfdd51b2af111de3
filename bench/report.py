"""One command, one report: runs the benchmarks, each in its own process (a compile cache or an
allocator left over from one never flatters the next), then writes bench/results/report_<device-slug>
.{jsonl,md,png}: every benchmark's headlines first (read from its rows), one figure with a panel from
each benchmark that draws one (its plot_panel), and each benchmark's own Markdown after.

    python -m bench.report                  # this machine: bench/results/report_cpu.* on a CPU
    bench/gpu.sh --full                     # a GPU: the GPU check, the parity tests, then this
    python -m bench.report --quick          # smaller shapes (a smoke run; not for the record)
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys
import time

from bench.results import (RESULTS_DIR, ROOT, Row, cli, headlines, headlines_md, provenance_md, read_rows, results_path,
                           publish, stamp)
from smollm.files import atomic_path


@dataclasses.dataclass(frozen=True)
class Step:
    """One benchmark the report runs: `python -m bench.<benchmark>`, with `quick` added for --quick
    (and `quick_cpu` too on a CPU)."""

    benchmark: str
    quick: tuple[str, ...] = ()
    quick_cpu: tuple[str, ...] = ()
    on_gpu: bool = True

    def args(self, quick: bool, gpu: bool) -> list[str]:
        return [*self.quick, *(() if gpu else self.quick_cpu)] if quick else []


STEPS = (
    Step("kernels", quick=("--tokens", "4096")),
    Step("train_step", quick=("--steps", "2", "--no-fit"), quick_cpu=("--seq", "64")),
    # On a GPU the kernels table has the cross-entropy's memory beside Liger's; on a CPU this is the record.
    Step("ce_memory", quick=("--n", "2048"), on_gpu=False),
)


def run_step(benchmark: str, args: list[str]) -> tuple[bool, float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", f"bench.{benchmark}", *args], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sys.stdout.write(proc.stdout[-4000:])
    return proc.returncode == 0, time.perf_counter() - t0, proc.stdout[-2000:]


def plot(panels: list[tuple[str, list[Row]]], path: str, title: str) -> None:
    """One figure, a panel per benchmark that draws one (bench.<name>.plot_panel(ax, rows))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6.5 * max(1, len(panels)), 4.2), squeeze=False)
    for ax, (benchmark, rows) in zip(axes[0], panels):
        importlib.import_module(f"bench.{benchmark}").plot_panel(ax, rows)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def demote(md: str) -> str:
    """A benchmark's Markdown one heading level down, to sit under the report's own headings."""
    return "\n".join("#" + line if line.startswith("#") else line for line in md.splitlines())


def main(argv=None):
    p = cli(__doc__)
    p.add_argument("--quick", action="store_true", help="small shapes, for a smoke run")
    p.add_argument("--tests-log", default=None, help="bench/gpu.sh: the parity tests' pytest summary, to quote")
    p.add_argument("--out", default=RESULTS_DIR)
    args = p.parse_args(argv)

    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    st = stamp("report", device)
    started = time.perf_counter()
    rows, results = [], {}  # results: benchmark -> its rows, for each step that ran
    for step in STEPS:
        if gpu and not step.on_gpu:
            continue
        step_args = ["--out", args.out, *step.args(args.quick, gpu)]
        command = f"python -m bench.{step.benchmark} {' '.join(step_args)}"
        print(f"=== {command}", flush=True)
        ok, seconds, tail = run_step(step.benchmark, step_args)
        rows.append(st.row({"step": step.benchmark, "command": command}, {"seconds": seconds},
                           status="ok" if ok else "error", reason=None if ok else tail))
        path = results_path(args.out, step.benchmark, st.device, "jsonl")
        if ok and os.path.isfile(path):
            results[step.benchmark] = read_rows(path)
    heads = [h for bench_rows in results.values() for h in headlines(bench_rows)]
    rows.append(st.summary(heads, {"seconds": time.perf_counter() - started}, quick=args.quick,
                           tests=args.tests_log))

    summary = rows[-1]
    lines = [f"# Benchmarks: {st.device}", "",
             provenance_md(summary, ("bench/gpu.sh --full" if gpu else "python -m bench.report")
                           + (" --quick" if args.quick else "")),
             f"{summary.metrics['seconds'] / 60:.1f} min in all. Every ratio compares rows measured side by side in "
             "this run.", ""]
    if not gpu:
        lines += ["No GPU here: the Triton and Liger rows are skipped (Triton's interpreter checks correctness, "
                  "its timings mean nothing), and what is measured is the PyTorch side on this CPU. "
                  "`bench/gpu.sh` measures every row on a GPU.", ""]
    if args.tests_log:
        lines += [f"Kernel parity tests compiled on this GPU: {args.tests_log}", ""]
    lines += headlines_md(rows)
    failed = [r for r in rows if r.status == "error"]
    if failed:
        lines += ["## Failed", ""] + [f"- `{r.parameters['command']}`: ```{r.reason[-600:]}```" for r in failed] + [""]
    panels = [(b, rs) for b, rs in results.items() if hasattr(importlib.import_module(f"bench.{b}"), "plot_panel")]
    png = results_path(args.out, "report", st.device, "png")
    try:  # matplotlib may be missing (a bare GPU machine: bench/gpu.sh --full): the tables are the record
        os.makedirs(args.out, exist_ok=True)
        plot(panels, png, f"{st.device} · commit {st.commit}")
        lines.append(f"![benchmarks]({os.path.basename(png)})\n")
    except ImportError as e:
        print(f"bench/report.py: no plot ({e})", flush=True)
    for benchmark in results:
        md_path = results_path(args.out, benchmark, st.device, "md")
        if os.path.isfile(md_path):
            with open(md_path) as f:
                lines += [demote(f.read()), ""]
    # the failed steps are listed in the Markdown (## Failed): not again on stderr
    return publish(args.out, rows, "\n".join(lines), [r.parameters["command"] for r in failed], echo_failures=False)


if __name__ == "__main__":
    sys.exit(main())
