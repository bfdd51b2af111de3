"""Evaluation throughput, side by side in one run: smollm.eval against lm-eval-harness's Hugging Face
backend (HFLM.loglikelihood), on the same model (the real SmolLM2-135M weights, exported as a Hugging
Face directory both load), the same items and the same (context, continuation) pairs, fp32.

- ours: one packed row per item (the shared context run once), `--batch-size` rows per forward;
- lm-eval: one row per choice, `--batch-size` rows per forward, its own sorting and caching.

Each side's time covers tokenizing and scoring (models loaded before); the median of `--repeats`
interleaved runs. The summary row gives the ratio and the largest log-likelihood difference.

    python -m bench.eval [--data-dir smollm/eval/local] [--batch-size 16] [--repeats 3]
        # writes bench/results/eval_<device>.{jsonl,md}
"""

import statistics
import sys
import tempfile
import time

import torch

from bench.results import RESULTS_DIR, Row, cli, headlines_md, provenance_md, publish, stamp

SHIPPED = "smollm/eval/local"


def main(argv=None):
    p = cli(__doc__)
    p.add_argument("--data-dir", default=SHIPPED, help="DIR/<task>.jsonl (default: the repository's hand-made items)")
    p.add_argument("--tasks", default="hellaswag,arc_easy,arc_challenge,piqa,winogrande,openbookqa,commonsense_qa")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=RESULTS_DIR)
    args = p.parse_args(argv)

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from smollm.eval.scoring import loglikelihoods
    from smollm.eval.tasks import load_items, parse_tasks
    from smollm.sources import load
    from smollm.tokenizer import smollm2_gguf_path, tokenizer_from_gguf
    from smollm.weights import export_hf, load_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    items = [i for t in parse_tasks(args.tasks) for i in load_items(t, args.data_dir, args.limit)]
    pairs = [rq for i in items for rq in i.requests]
    with tempfile.TemporaryDirectory() as tmp:
        gguf = smollm2_gguf_path()
        model_dir = export_hf(load_model(gguf), f"{tmp}/model", tokenizer_from_gguf(gguf))
        ours, tok = load(model_dir)
        ours = ours.to(device=device, dtype=torch.float32)
        hf = HFLM(pretrained=model_dir, dtype="float32", device=str(device), batch_size=args.batch_size)

    def run_ours():
        return [s.loglikelihood for scored in loglikelihoods(ours, tok, [i.requests for i in items], args.batch_size,
                                                             device) for s in scored]

    def run_lm_eval():
        reqs = [Instance("loglikelihood", {}, pair, n) for n, pair in enumerate(pairs)]
        return [ll for ll, _ in hf.loglikelihood(reqs, disable_tqdm=True)]

    st = stamp("eval", device)
    params = {"items": len(items), "requests": len(pairs), "tasks": args.tasks, "data": args.data_dir,
              "batch_size": args.batch_size, "dtype": "fp32", "threads": torch.get_num_threads(),
              "repeats": args.repeats}
    runs = {"smollm.eval (packed, shared context)": run_ours, "lm-eval-harness HFLM": run_lm_eval}
    times: dict[str, list[float]] = {k: [] for k in runs}
    lls = {k: f() for k, f in runs.items()}  # warm-up, and the scores compared
    for _ in range(args.repeats):
        for name, f in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            f()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    rows = [st.row({**params, "method": name}, {"seconds": statistics.median(ts), "seconds_range": [min(ts), max(ts)],
                                                "items_per_s": len(items) / statistics.median(ts),
                                                "requests_per_s": len(pairs) / statistics.median(ts)})
            for name, ts in times.items()]
    ours_s, theirs_s = (r.metrics["items_per_s"] for r in rows)
    diff = max(abs(a - b) for a, b in zip(*lls.values()))
    rows.append(st.summary([f"ours vs lm-eval-harness's HF backend: {ours_s / theirs_s:.2f}x the items/s "
                            f"({ours_s:,.1f} vs {theirs_s:,.1f}) on {len(items)} items, {len(pairs)} choices",
                            f"largest log-likelihood difference between the two: {diff:.1e} (fp32)"],
                           {"ratio": ours_s / theirs_s, "max_ll_diff": diff}, **params))
    return publish(args.out, rows, to_markdown(rows))


def to_markdown(rows: list[Row]) -> str:
    summary, results = rows[-1], rows[:-1]
    p = summary.parameters
    lines = [f"# Evaluation throughput ({summary.device}, fp32, {p['threads']} threads)", "",
             provenance_md(summary, "python -m bench.eval"), "",
             f"Real SmolLM2-135M weights, {p['items']} items ({p['requests']} choices) of {p['tasks']} from "
             f"{p['data']}, batch size {p['batch_size']}; each the median of {p['repeats']} interleaved runs.", "",
             *headlines_md(rows), "| method | items/s | choices/s | seconds | range |", "|---|---:|---:|---:|---|"]
    for r in results:
        m = r.metrics
        lines.append(f"| {r.parameters['method']} | {m['items_per_s']:,.1f} | {m['requests_per_s']:,.1f} | "
                     f"{m['seconds']:.2f} | {m['seconds_range'][0]:.2f}-{m['seconds_range'][1]:.2f} |")
    return "\n".join(lines + [""])


if __name__ == "__main__":
    sys.exit(main())
