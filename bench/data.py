"""Data pipeline throughput, side by side in one run, on the offline corpus (the standard library):

1. tokenization: a plain single-process `tokenizer.encode` loop against `smollm.prepare` (batched
   encoding in worker processes x threads, writing shards) on one core and on all of them, over the
   same documents;
2. the loader: batches/s of B=16 x T=1024 random windows from the memory-mapped shards, against what
   the A10G training target (A10G_TOKENS_PER_S) consumes.

It measures the CPU whatever else the machine has: the row's device is the CPU and its core count.

    python -m bench.data [--mb 40]          # writes bench/results/data_cpu.{jsonl,md}
"""

import json
import os
import sys
import tempfile
import time

from bench.results import RESULTS_DIR, Row, Stamp, cli, headlines_md, provenance_md, publish, stamp

A10G_TOKENS_PER_S = 45_000  # what the A10G training run consumes: the loader must stay far above it


def measure(args, st: Stamp) -> list[Row]:
    from smollm.data import TokenWindows
    from smollm.prepare.run import prepare
    from smollm.prepare.sources import iter_stdlib
    from smollm.tokenizer import load_tokenizer

    tok = load_tokenizer()
    docs, size = [], 0
    for doc in iter_stdlib():
        if size >= args.mb * 1e6:
            break
        if doc.strip():
            docs.append(doc)
            size += len(doc.encode())
    corpus_params = {"stage": "tokenization", "documents": len(docs), "source_mb": size / 1e6}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.jsonl")
        with open(corpus, "w") as f:
            for d in docs:
                f.write(json.dumps({"text": d}) + "\n")

        t0 = time.perf_counter()
        n_tokens = sum(len(tok.encode(d)) + 1 for d in docs)  # +1: the <|endoftext|> each document gets
        plain = time.perf_counter() - t0
        corpus_params["tokens"] = n_tokens
        rows.append(st.row({**corpus_params, "method": "plain loop: tokenizer.encode, 1 process", "workers": 1},
                           {"seconds": plain, "tokens_per_s": n_tokens / plain}))
        print(f"plain loop: {n_tokens / plain:,.0f} tokens/s", flush=True)
        cores = os.cpu_count() or 1
        # (processes, threads each): one core, then every core split both ways, then the default.
        configs = [(1, 1), (1, 2), (2, 1)] + ([(cores // 2, 2)] if cores > 2 else [])
        for workers, threads in configs:
            out = os.path.join(tmp, f"ds{workers}x{threads}")
            t0 = time.perf_counter()
            meta = prepare([corpus], out, tokenizer=tok, workers=workers, threads=threads, val_fraction=0.01,
                           progress=False)
            dt = time.perf_counter() - t0
            assert meta["tokens"]["train"] + meta["tokens"]["val"] == n_tokens
            method = (f"smollm.prepare, {workers} process{'es' if workers > 1 else ''} x {threads} "
                      f"thread{'s' if threads > 1 else ''} (shards written)")
            rows.append(st.row({**corpus_params, "method": method, "workers": workers, "threads": threads},
                               {"seconds": dt, "tokens_per_s": n_tokens / dt,
                                "main_busy_fraction": meta["main_busy_seconds"] / meta["seconds"]}))
            print(f"prepare, {workers} x {threads}: {n_tokens / dt:,.0f} tokens/s", flush=True)

        windows = TokenWindows(os.path.join(tmp, "ds1x1"), "train", args.seq)
        windows.get_batch(0, 0, args.batch)  # warm the page cache
        t0 = time.perf_counter()
        for step in range(args.steps):
            windows.get_batch(0, step, args.batch)
        loader_dt = time.perf_counter() - t0
    batches_per_s = args.steps / loader_dt
    rows.append(st.row({"stage": "loader", "batch": args.batch, "seq": args.seq, "steps": args.steps},
                       {"batches_per_s": batches_per_s, "tokens_per_s": batches_per_s * args.batch * args.seq,
                        "over_a10g_target": batches_per_s * args.batch * args.seq / A10G_TOKENS_PER_S}))
    return rows


def summarize(rows: list[Row], cores: int, st: Stamp) -> Row:
    """Each tokenization method against the plain loop, how it scales with cores, and the headlines."""
    tok = [r for r in rows if r.parameters["stage"] == "tokenization"]
    loader = next(r for r in rows if r.parameters["stage"] == "loader")
    plain, one_core = tok[0].metrics["tokens_per_s"], tok[1].metrics["tokens_per_s"]
    best = max(tok[2:], key=lambda r: r.metrics["tokens_per_s"])
    threads = best.parameters["workers"] * best.parameters["threads"]
    metrics = {"speedup_vs_plain": {r.parameters["method"]: r.metrics["tokens_per_s"] / plain for r in tok[1:]},
               "one_core_tokens_per_s": one_core, "best": best.parameters["method"],
               "parallel_efficiency": best.metrics["tokens_per_s"] / one_core / threads,
               "main_busy_fraction": best.metrics["main_busy_fraction"]}
    best_tps, lm = best.metrics["tokens_per_s"], loader.metrics
    heads = [f"tokenization {best_tps / plain:.2f}x a plain `tokenizer.encode` loop on {cores} cores "
             f"({best_tps / 1e6:.2f}M tokens/s)",
             f"loader {lm['tokens_per_s'] / 1e6:,.0f}M tokens/s, {lm['over_a10g_target']:,.0f}x what the A10G target "
             f"({A10G_TOKENS_PER_S:,} tokens/s) consumes"]
    return st.summary(heads, metrics, cores=cores, a10g_tokens_per_s=A10G_TOKENS_PER_S)


def to_markdown(rows: list[Row]) -> str:
    """The run's rows (its summary row last) as the throughput tables and the scaling note."""
    summary = rows[-1]
    s, m = summary.parameters, summary.metrics
    tok = [r for r in rows if r.parameters.get("stage") == "tokenization"]
    loader = next(r for r in rows if r.parameters.get("stage") == "loader")
    plain = tok[0].metrics["tokens_per_s"]
    corpus = tok[0].parameters
    best = next(r for r in tok if r.parameters["method"] == m["best"])
    busy = m["main_busy_fraction"]
    lp, lm = loader.parameters, loader.metrics
    lines = [f"# Data pipeline throughput ({s['cores']} CPU cores)", "", provenance_md(summary), ""]
    lines += headlines_md(rows)
    lines += [f"Tokenization of {corpus['documents']:,} standard-library files ({corpus['source_mb']:.1f} MB, "
              f"{corpus['tokens']:,} tokens), the same documents for every row:", "",
              "| method | tokens/s | vs plain loop |", "|---|---:|---:|"]
    lines += [f"| {r.parameters['method']} | {r.metrics['tokens_per_s']:,.0f} | "
              f"{r.metrics['tokens_per_s'] / plain:.2f}x |" for r in tok]
    lines += ["", f"How it scales with cores: one core encodes {m['one_core_tokens_per_s']:,.0f} tokens/s; the best "
              f"row uses {best.parameters['workers'] * best.parameters['threads']} threads in all at "
              f"{m['parallel_efficiency']:.0%} parallel efficiency. Documents are independent, "
              f"so throughput grows with cores (processes x threads = cores) until the main process, which reads "
              f"the source and writes shards, is busy all the time: it was busy {busy:.0%} of this run, a ceiling "
              f"near {1 / max(busy, 1e-9):.0f}x this run's speed. Two threads per process (the default: cores/2 "
              f"processes) keep the part of each batch that holds the GIL from idling a core. A Hugging Face "
              f"stream adds download and decoding in the main process, which lowers that ceiling."]
    lines += ["", f"Loader: {lm['batches_per_s']:,.0f} batches/s of {lp['batch']} x {lp['seq']} = "
              f"{lm['tokens_per_s'] / 1e6:,.1f}M tokens/s, {lm['over_a10g_target']:,.0f}x the "
              f"{s['a10g_tokens_per_s']:,} tokens/s the A10G target consumes.", ""]
    return "\n".join(lines)


def main(argv=None):
    p = cli(__doc__)
    p.add_argument("--mb", type=float, default=40.0, help="megabytes of standard-library source to tokenize")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", default=RESULTS_DIR)
    args = p.parse_args(argv)
    st = stamp("data", "cpu")
    rows = measure(args, st)
    cores = os.cpu_count() or 1
    rows.append(summarize(rows, cores, st))
    return publish(args.out, rows, to_markdown(rows))


if __name__ == "__main__":
    sys.exit(main())
