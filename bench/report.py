"""One command, one report: runs the benchmarks, each in its own process (a compile cache or an
allocator left over from one never flatters the next), then writes bench/results/<device>.md, .json
and .png with the headline ratios first and each benchmark's own table after.

    python bench/report.py                  # this machine: bench/results/cpu.{md,json,png} on a CPU
    bench/gpu.sh                            # a GPU: parity tests compiled there first, then this
    python bench/report.py --quick          # smaller shapes (a smoke run; not for the record)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.results_io import write_results  # noqa: E402
from smollm.files import atomic_path  # noqa: E402


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_script(script: str, args: list[str]) -> tuple[bool, float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script), *args], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sys.stdout.write(proc.stdout[-4000:])
    return proc.returncode == 0, time.perf_counter() - t0, proc.stdout[-2000:]


def plot(kernels: dict | None, train: dict | None, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in (kernels, train) if p]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6.5 * max(1, len(panels)), 4.2), squeeze=False)
    axes = axes[0]
    i = 0
    if kernels:
        ax = axes[i]
        i += 1
        tokens = sorted({r["tokens"] for r in kernels["rows"]})
        mid = 16384 if 16384 in tokens else tokens[0]
        ops = [op for op in ("rmsnorm", "rope", "swiglu", "ce") if any(
            r["op"] == op and r["tokens"] == mid and "ms" in r for r in kernels["rows"])]
        impls = ["eager", "compiled", "triton", "liger"]
        width = 0.8 / len(impls)
        for j, impl in enumerate(impls):
            xs, ys = [], []
            for k, op in enumerate(ops):
                r = next((r for r in kernels["rows"] if (r["op"], r["mode"], r["tokens"], r["impl"])
                          == (op, "fwd+bwd", mid, impl) and "ms" in r), None)
                if r:
                    xs.append(k + (j - 1.5) * width)
                    ys.append(r["ms"])
            if xs:
                ax.bar(xs, ys, width, label=impl)
        bounds = [next(r["a10g_bound_ms"] for r in kernels["rows"] if (r["op"], r["mode"], r["tokens"])
                       == (op, "fwd+bwd", mid)) for op in ops]
        ax.scatter(range(len(ops)), bounds, marker="_", s=900, color="black", label="A10G roofline bound")
        ax.set_xticks(range(len(ops)), ops)
        ax.set_yscale("log")
        ax.set_ylabel("ms (log scale, lower is better)")
        ax.set_title(f"kernels, forward+backward, {mid:,} tokens, {kernels['dtype']}"
                     + ("\n(triton and liger: GPU only)" if kernels["device"].startswith("cpu") else ""))
        ax.legend(fontsize=8)
    if train:
        ax = axes[i]
        rows = [r for r in train["rows"] if "tokens_per_s" in r]
        ax.barh([r["method"] for r in rows][::-1], [r["tokens_per_s"] for r in rows][::-1], color="tab:blue")
        for y, r in enumerate(rows[::-1]):
            ax.text(r["tokens_per_s"], y, f" {r['tokens_per_s']:,.0f}", va="center", fontsize=8)
        ax.set_xlabel("tokens/s (higher is better)")
        ax.set_title(f"training step, {train['preset']}, {train['batch']} x {train['seq']}")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes, for a smoke run")
    p.add_argument("--tests-log", default=None, help="bench/gpu.sh: the parity tests' pytest summary, to quote")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = p.parse_args(argv)

    import torch

    from bench.measure import device_name, results_name

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = results_name(device)
    gpu = device.type == "cuda"
    started = time.perf_counter()
    commit = git_commit()
    out = ["--out", args.out]
    steps = [("kernels.py", (["--tokens", "4096"] if args.quick else []) + out),
             ("train_step.py", (["--steps", "2", "--no-fit"] + ([] if gpu else ["--seq", "64"]) if args.quick else [])
              + out)]
    if not gpu:
        steps.append(("ce_memory.py", (["--n", "2048"] if args.quick else []) + out))
    ran = []
    for script, script_args in steps:
        print(f"=== bench/{script} {' '.join(script_args)}", flush=True)
        ok, seconds, tail = run_script(script, script_args)
        ran.append({"script": script, "args": script_args, "ok": ok, "seconds": seconds,
                    **({} if ok else {"error": tail})})

    def load(stem):
        path = os.path.join(args.out, f"{stem}.json")
        if os.path.isfile(path):
            with open(path) as f:
                return json.load(f)
        return None

    def text(stem):
        path = os.path.join(args.out, f"{stem}.md")
        if os.path.isfile(path):
            with open(path) as f:
                return f.read()
        return None

    kernels = load(f"kernels_{name}") if ran[0]["ok"] else None
    train = load(f"train_step_{name}") if ran[1]["ok"] else None
    ce = load(f"ce_memory_{device.type}") if not gpu and ran[-1]["ok"] else None
    heads = list(kernels["headlines"]) if kernels else []
    if train:
        heads += [f"training step: {k.replace('_', ' ')} {v:.2f}x" for k, v in train["ratios"].items()]
        best = max((r for r in train["rows"] if "tokens_per_s" in r), key=lambda r: r["tokens_per_s"], default=None)
        if best:
            heads.append(f"training step: fastest {best['method']}, {best['tokens_per_s']:,.0f} tokens/s"
                         + (f", MFU {best['mfu']:.1%}" if best.get("mfu") else "")
                         + f" at {train['batch']} x {train['seq']} ({train['preset']})")
        if train.get("largest_batch"):
            heads += [f"largest micro-batch x {train['seq']} in {train['fit_gb']:g} GB, {k}: {v}"
                      for k, v in train["largest_batch"].items()]
    if ce:
        heads.append(f"fused cross-entropy, N={ce['n']}, fp32: {ce['naive_extra_mib'] / ce['fused_extra_mib']:.1f}x "
                     f"less peak memory than full logits ({ce['fused_extra_mib']:,.0f} vs {ce['naive_extra_mib']:,.0f} MiB)")
    total = time.perf_counter() - started
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# Benchmarks: {device_name(device)}", "",
             f"`{'bench/gpu.sh' if gpu else 'python bench/report.py'}`{' --quick' if args.quick else ''} at commit "
             f"{commit}, {stamp}; torch {torch.__version__}; {total / 60:.1f} min in all. Every ratio compares "
             "rows measured side by side in this run.", ""]
    if not gpu:
        lines += ["No GPU here: the Triton and Liger rows are skipped (Triton's interpreter checks correctness, "
                  "its timings mean nothing), and what is measured is the PyTorch side on this CPU. "
                  "`bench/gpu.sh` measures every row on a GPU.", ""]
    if args.tests_log:
        lines += [f"Kernel parity tests compiled on this GPU: {args.tests_log}", ""]
    lines += ["## Headlines", ""] + [f"- {h}" for h in heads] + [""]
    failed = [r for r in ran if not r["ok"]]
    if failed:
        lines += ["## Failed", ""] + [f"- bench/{r['script']}: ```{r['error'][-600:]}```" for r in failed] + [""]
    try:  # matplotlib may be missing (a bare GPU machine: bench/gpu.sh --full): the tables are the record
        os.makedirs(args.out, exist_ok=True)
        plot(kernels, train, os.path.join(args.out, f"{name}.png"), f"{device_name(device)} · commit {commit}")
        lines.append(f"![benchmarks]({name}.png)\n")
    except ImportError as e:
        print(f"bench/report.py: no plot ({e})", flush=True)
    for stem in (f"kernels_{name}", f"train_step_{name}") + (() if gpu else (f"ce_memory_{device.type}",)):
        body = text(stem)
        if body:
            lines += [body.replace("\n# ", "\n### ").replace("# ", "## ", 1), ""]
    md = "\n".join(lines)
    summary = {"device": device_name(device), "commit": commit, "time": stamp, "torch": torch.__version__,
               "seconds": total, "quick": args.quick, "runs": ran, "headlines": heads, "tests": args.tests_log}
    write_results(args.out, name, {"md": md, "json": json.dumps(summary, indent=1)})
    print(md)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
