"""Peak extra memory of loss + backward for the LM head + cross-entropy, measured side by side:
naive (full logits + F.cross_entropy) against kernels.linear_cross_entropy (fused, chunked).

Each variant runs in a fresh process. Extra memory = the peak of tensor memory allocated during loss +
backward, beyond the inputs: on a GPU from torch.cuda's peak counter, on the CPU from the allocation
events of torch.profiler (the same accounting). The CPU's resident-set growth (ru_maxrss) is
reported beside it; it also counts BLAS packing workspace and memory the C allocator keeps after a
free, which are not tensors.

    python bench/ce_memory.py [--n 8192 16384] [--v 49152] [--d 576]   # bench/results/ce_memory_<device>.{md,json}
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.measure import peak_extra_bytes  # noqa: E402
from bench.results_io import write_results  # noqa: E402
MiB = 2 ** 20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(variant: str, n: int, v: int, d: int, device: str) -> dict:
    import torch

    from kernels.cross_entropy import linear_cross_entropy, linear_cross_entropy_reference

    fn = {"naive": linear_cross_entropy_reference, "fused": linear_cross_entropy}[variant]
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, d, generator=g).to(device).requires_grad_()
    weight = (torch.randn(v, d, generator=g) / d ** 0.5).to(device).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    losses = []

    def loss_and_backward():
        loss = fn(hidden, weight, targets)
        loss.backward()
        losses.append(loss.item())

    t0 = time.perf_counter()
    rss_base = _rss()
    peak = peak_extra_bytes(loss_and_backward, torch.device(device))
    row = {"variant": variant, "extra_bytes": peak, "loss": losses[0], "seconds": time.perf_counter() - t0}
    if device != "cuda":
        row["rss_extra_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_base
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[8192], help="tokens; several give one row each")
    p.add_argument("--v", type=int, default=49152)
    p.add_argument("--d", type=int, default=576)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.n[0], args.v, args.d, args.device)))
        return 0

    import torch

    from kernels.cross_entropy import CHUNK_BYTES, budget_chunk_rows

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    v, d = args.v, args.d
    results = []
    for n in args.n:
        rows = {}
        for variant in ("naive", "fused"):  # a fresh process per variant and N
            out = subprocess.run([sys.executable, __file__, "--child", variant, "--n", str(n), "--v", str(v),
                                  "--d", str(d), "--device", device], capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{variant} at N={n} failed (exit {out.returncode}; out of memory?):\n"
                                 f"{out.stderr[-2000:]}")
            rows[variant] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"N={n} {variant}: extra {rows[variant]['extra_bytes'] / MiB:.0f} MiB "
                  f"(resident set +{rows[variant].get('rss_extra_bytes', 0) / MiB:.0f} MiB), "
                  f"loss {rows[variant]['loss']:.6f}, {rows[variant]['seconds']:.1f}s", flush=True)
        chunk_rows = budget_chunk_rows(n, v, 4)  # fp32 logits
        unavoidable = 4 * (v * d + n * d)  # grad_weight + grad_hidden, fp32
        naive, fused = rows["naive"]["extra_bytes"], rows["fused"]["extra_bytes"]
        results.append({
            "n": n, "naive_extra_mib": naive / MiB, "fused_extra_mib": fused / MiB,
            "fused_over_naive": fused / naive, "unavoidable_grad_mib": unavoidable / MiB,
            "fused_over_unavoidable": fused / unavoidable,
            "chunk_rows": chunk_rows, "chunks": -(-n // chunk_rows), "chunk_mib": chunk_rows * v * 4 / MiB,
            "loss_naive": rows["naive"]["loss"], "loss_fused": rows["fused"]["loss"],
            "rss_naive_extra_mib": rows["naive"].get("rss_extra_bytes", 0) / MiB,
            "rss_fused_extra_mib": rows["fused"].get("rss_extra_bytes", 0) / MiB,
            "seconds_naive": rows["naive"]["seconds"], "seconds_fused": rows["fused"]["seconds"],
        })
    # The first N's numbers stay at the top level (bench/report.py reads them); every N is in "rows".
    summary = {"device": device, "v": v, "d": d, "dtype": "fp32", "chunk_budget_mib": CHUNK_BYTES / MiB,
               **results[0], "rows": results}
    rss = device != "cuda"
    md = "\n".join([
        f"# Fused linear cross-entropy: peak extra memory of loss + backward ({device}, fp32)", "",
        f"V = {v}, D = {d}. Extra = peak tensor memory allocated during loss + backward, beyond the inputs"
        f"{'' if device == 'cuda' else ' (torch.profiler allocation events)'}. The fused op's chunks come from "
        f"its budget of {CHUNK_BYTES / MiB:,.0f} MiB of logits per chunk (kernels.cross_entropy.CHUNK_BYTES); "
        "the unavoidable buffers are grad_weight + grad_hidden (fp32).", "",
        "| N | naive extra | fused extra | fused / naive | fused / unavoidable | unavoidable | chunk rows x chunks "
        "| chunk logits |" + (" resident set growth, naive / fused |" if rss else ""),
        "|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if rss else ""),
        *(f"| {r['n']} | {r['naive_extra_mib']:,.0f} MiB | {r['fused_extra_mib']:,.0f} MiB | "
          f"{r['fused_over_naive']:.3f} | {r['fused_over_unavoidable']:.2f}x | {r['unavoidable_grad_mib']:,.0f} MiB | "
          f"{r['chunk_rows']} x {r['chunks']} | {r['chunk_mib']:,.0f} MiB |"
          + (f" {r['rss_naive_extra_mib']:,.0f} / {r['rss_fused_extra_mib']:,.0f} MiB |" if rss else "")
          for r in results),
        "", "Losses (naive / fused): " + "; ".join(f"N={r['n']} {r['loss_naive']:.6f} / {r['loss_fused']:.6f}"
                                                   for r in results) + ".", ""])
    write_results(args.out, f"ce_memory_{device}", {"md": md, "json": json.dumps(summary, indent=1)})
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
