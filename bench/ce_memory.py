"""Peak extra memory of loss + backward for the LM head + cross-entropy, measured side by side:
naive (full logits + F.cross_entropy) against smollm.kernels.cross_entropy.linear_cross_entropy (fused,
chunked), at the model's hidden size and vocabulary.

Each variant runs in a fresh process. Extra memory = the peak of tensor memory allocated during loss +
backward, beyond the inputs: on a GPU from torch.cuda's peak counter, on the CPU from the allocation
events of torch.profiler (the same accounting). The CPU's resident-set growth (ru_maxrss) is
reported beside it; it also counts BLAS packing workspace and memory the C allocator keeps after a
free, which are not tensors.

    python -m bench.ce_memory [--n 8192 16384] [--v V] [--d D]   # V, D: smollm2-135m's unless given
        # writes bench/results/ce_memory_<device-slug>.{jsonl,md}
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from bench.measure import peak_extra_bytes
from bench.results import RESULTS_DIR, ROOT, Row, cli, headlines_md, provenance_md, publish, stamp
from smollm.config import get_preset

MiB = 2 ** 20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(variant: str, n: int, v: int, d: int, device: str) -> dict:
    import torch

    from smollm.kernels.cross_entropy import linear_cross_entropy, linear_cross_entropy_reference

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


def headlines(rows: list[Row]) -> list[str]:
    return [f"fused cross-entropy, N={r.parameters['n']}, {r.parameters['dtype']}: "
            f"{r.metrics['naive_extra_mib'] / r.metrics['fused_extra_mib']:.1f}x less peak memory than full logits "
            f"({r.metrics['fused_extra_mib']:,.0f} vs {r.metrics['naive_extra_mib']:,.0f} MiB)" for r in rows]


def to_markdown(rows: list[Row]) -> str:
    """The run's rows (its summary row last) as the memory table."""
    summary, results = rows[-1], [r.flat() for r in rows[:-1]]
    p = summary.parameters
    rss = not p["device"].startswith("cuda")
    return "\n".join([
        f"# Fused linear cross-entropy: peak extra memory of loss + backward ({p['device']}, {p['dtype']})", "",
        provenance_md(summary), "",
        f"V = {p['v']}, D = {p['d']}. Extra = peak tensor memory allocated during loss + backward, beyond the inputs"
        f"{'' if not rss else ' (torch.profiler allocation events)'}. The fused op's chunks come from "
        f"its budget of {p['chunk_budget_mib']:,.0f} MiB of logits per chunk (smollm.kernels.cross_entropy.CHUNK_BYTES); "
        "the unavoidable buffers are grad_weight + grad_hidden (fp32).", "",
        *headlines_md(rows),
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


def main(argv=None):
    model = get_preset("smollm2-135m")
    p = cli(__doc__)
    p.add_argument("--n", type=int, nargs="+", default=[8192], help="tokens; several give one row each")
    p.add_argument("--v", type=int, default=model.vocab_size)
    p.add_argument("--d", type=int, default=model.hidden_size)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=RESULTS_DIR)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.n[0], args.v, args.d, args.device)))
        return 0

    import torch

    from smollm.kernels.cross_entropy import CHUNK_BYTES, budget_chunk_rows

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    v, d = args.v, args.d
    st = stamp("ce_memory", device)
    params = {"v": v, "d": d, "dtype": "fp32", "device": device, "chunk_budget_mib": CHUNK_BYTES / MiB}
    results = []
    for n in args.n:
        rows = {}
        for variant in ("naive", "fused"):  # a fresh process per variant and N
            out = subprocess.run([sys.executable, "-m", "bench.ce_memory", "--child", variant, "--n", str(n),
                                  "--v", str(v), "--d", str(d), "--device", device], cwd=ROOT, capture_output=True,
                                 text=True)
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
        results.append(st.row({"n": n, **params}, {
            "naive_extra_mib": naive / MiB, "fused_extra_mib": fused / MiB,
            "fused_over_naive": fused / naive, "unavoidable_grad_mib": unavoidable / MiB,
            "fused_over_unavoidable": fused / unavoidable,
            "chunk_rows": chunk_rows, "chunks": -(-n // chunk_rows), "chunk_mib": chunk_rows * v * 4 / MiB,
            "loss_naive": rows["naive"]["loss"], "loss_fused": rows["fused"]["loss"],
            "rss_naive_extra_mib": rows["naive"].get("rss_extra_bytes", 0) / MiB,
            "rss_fused_extra_mib": rows["fused"].get("rss_extra_bytes", 0) / MiB,
            "seconds_naive": rows["naive"]["seconds"], "seconds_fused": rows["fused"]["seconds"],
        }))
    results.append(st.summary(headlines(results), **params))
    return publish(args.out, results, to_markdown(results))


if __name__ == "__main__":
    sys.exit(main())
