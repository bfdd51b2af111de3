"""Training-step throughput, side by side in one run: a full step (forward, loss, backward, AdamW)
of our model on the torch path eager, the torch path compiled and the triton path compiled, against
transformers' LlamaForCausalLM compiled, with and without Liger-Kernel's patch; tokens/s, MFU and
peak memory. On a GPU: bf16 autocast and fused AdamW as the trainer runs them, micro-batch 16 x 1024
(the A10G run), and the largest micro-batch of 1024-token sequences that fits in 24 GB (the A10G's
memory; a larger card is capped with torch.cuda.set_per_process_memory_fraction).

On a CPU: the torch-path rows and transformers on a small preset (fp32), the triton and Liger rows
skipped (Triton's interpreter measures nothing).

    python -m bench.train_step [--preset smollm2-135m] [--batch 16] [--seq 1024] [--steps 10] [--fit-gb 24]
        # writes bench/results/train_step_<device-slug>.{jsonl,md}
"""

from __future__ import annotations

import contextlib
import sys
import time

import torch

from bench.measure import peak_extra_bytes, sync
from bench.results import RESULTS_DIR, Row, cli, headlines_md, provenance_md, publish, stamp
from smollm.config import get_preset
from smollm.kernels import register_inductor_fallbacks
from smollm.metrics import mfu
from smollm.model import SmolLM

ROWS = [  # (name, builder, kernels, compiled)
    ("ours, torch path, eager", "ours", "torch", False),
    ("ours, torch path, compiled", "ours", "torch", True),
    ("ours, triton path, compiled", "ours", "triton", True),
    ("transformers, compiled", "hf", None, True),
    ("transformers + Liger, compiled", "hf-liger", None, True),
]
GiB = 2 ** 30


def build(builder: str, kernels: str | None, cfg, device):
    """(model, loss_fn(model, x, y) -> loss), or the reason this row cannot run here."""
    if builder == "ours":
        model = SmolLM(cfg, kernels=kernels).to(device)
        return model, lambda m, x, y: m(x, y)
    from transformers import LlamaConfig, LlamaForCausalLM

    if builder == "hf-liger":
        try:
            from liger_kernel.transformers import apply_liger_kernel_to_llama
        except ImportError:
            return "liger-kernel is not installed"
    hf_cfg = LlamaConfig(**cfg.to_hf_dict())
    torch.manual_seed(0)
    model = LlamaForCausalLM(hf_cfg).to(device)
    if builder == "hf-liger":
        # RMSNorm, RoPE, SwiGLU, fused linear cross-entropy. Liger patches transformers' Llama module
        # for the whole process, so this row runs after the plain transformers row.
        apply_liger_kernel_to_llama(model=model)

    def loss_fn(m, x, y):  # transformers' own loss path (Liger's fused one once patched): labels = inputs
        return m(input_ids=x, labels=x).loss
    return model, loss_fn


def step_fn(model, loss_fn, compiled: bool, device, fused: bool | None = None):
    """One training step (bf16 autocast on a GPU); fused AdamW on a GPU unless `fused` says otherwise."""
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    fused = device.type == "cuda" if fused is None else fused
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01, fused=fused)
    if compiled:
        register_inductor_fallbacks()  # torch < 2.13: else the 30-layer triton path never compiles
    fwd = torch.compile(loss_fn) if compiled else loss_fn

    def step(x, y):
        with amp():
            loss = fwd(model, x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


def batch(cfg, b, t, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, cfg.vocab_size, (b, t + 1), generator=g).to(device)
    return xy[:, :-1], xy[:, 1:]


def measure_row(name, builder, kernels, compiled, cfg, b, t, steps, device) -> dict:
    """The measured fields of one method (tokens_per_s, mfu, loss, memory), or {"skipped": reason}."""
    row = {}
    if device.type == "cpu" and (kernels == "triton" or builder == "hf-liger"):
        return {"skipped": "CPU: Triton's interpreter checks correctness; its timings mean nothing"}
    built = build(builder, kernels, cfg, device)
    if isinstance(built, str):
        return {"skipped": built}
    model, loss_fn = built
    step = step_fn(model, loss_fn, compiled, device)
    x, y = batch(cfg, b, t, device)
    try:
        t0 = time.perf_counter()
        for _ in range(3):  # compile, autotune, allocator
            loss = step(x, y)
        sync(device)
        row["warmup_s"] = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step(x, y)
        sync(device)
        dt = time.perf_counter() - t0
        row["loss"] = loss.item()
        row["tokens_per_s"] = b * t * steps / dt
        row["mfu"] = mfu(row["tokens_per_s"], cfg, t, device)
        if device.type == "cuda":
            row["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        else:
            row["peak_extra_mib"] = peak_extra_bytes(lambda: step(x, y), device) / 2 ** 20
    except torch.OutOfMemoryError:
        row = {"skipped": "out of memory"}
    finally:
        model = step = None  # free the model and optimizer state before the next row
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"{name:<34} {b} x {t}: " + (f"{row['tokens_per_s']:>10,.0f} tokens/s" if "tokens_per_s" in row
                                        else row["skipped"]), flush=True)
    return row


def largest_batch(builder, kernels, cfg, t, device, limit_gb, candidates=(16, 24, 32, 48, 64, 96, 128)) -> int | None:
    """The largest micro-batch of t-token sequences whose compiled step runs within limit_gb."""
    index = device.index or torch.cuda.current_device()  # the fraction takes a device index, not torch.device("cuda")
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, limit_gb * GiB / total), index)
    built = build(builder, kernels, cfg, device)
    if isinstance(built, str):
        return None
    model, loss_fn = built
    step = step_fn(model, loss_fn, True, device)
    best = None
    try:
        for b in candidates:
            x, y = batch(cfg, b, t, device)
            try:
                step(x, y)
                step(x, y)
                sync(device)
                best = b
            except torch.OutOfMemoryError:
                break
            finally:
                del x, y
                torch.cuda.empty_cache()
    finally:
        model = step = None
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(1.0, index)
    return best


RATIOS = [  # (key, numerator method, denominator method)
    ("triton_compiled_vs_torch_compiled", "ours, triton path, compiled", "ours, torch path, compiled"),
    ("triton_compiled_vs_transformers_liger", "ours, triton path, compiled", "transformers + Liger, compiled"),
    ("torch_compiled_vs_transformers_compiled", "ours, torch path, compiled", "transformers, compiled"),
    ("torch_compiled_vs_torch_eager", "ours, torch path, compiled", "ours, torch path, eager"),
]


def summarize(rows: list[Row]) -> tuple[dict, list[str]]:
    """The ratios between methods, and the headlines: those ratios, the fastest method, and the
    largest micro-batch that fits."""
    tps = {r.parameters["method"]: r.metrics.get("tokens_per_s") for r in rows}
    ratios = {key: tps[a] / tps[b] for key, a, b in RATIOS if tps.get(a) and tps.get(b)}
    heads = [f"training step: {k.replace('_', ' ')} {v:.2f}x" for k, v in ratios.items()]
    ran = [r for r in rows if r.metrics.get("tokens_per_s")]
    if ran:
        best = max(ran, key=lambda r: r.metrics["tokens_per_s"])
        p, m = best.parameters, best.metrics
        heads.append(f"training step: fastest {p['method']}, {m['tokens_per_s']:,.0f} tokens/s"
                     + (f", MFU {m['mfu']:.1%}" if m.get("mfu") else "")
                     + f" at {p['batch']} x {p['seq']} ({p['preset']})")
    heads += [f"largest micro-batch x {r.parameters['seq']} in {r.parameters['fit_gb']:g} GB, "
              f"{r.parameters['method']}: {r.metrics['largest_batch']}" for r in rows if "largest_batch" in r.metrics]
    return ratios, heads


def to_markdown(rows: list[Row]) -> str:
    """The run's rows (its summary row last) as the training-step table."""
    summary, methods = rows[-1], rows[:-1]
    s = summary.parameters
    gpu = not summary.device.startswith("cpu")
    fits = any("largest_batch" in r.metrics for r in methods)
    eager = next((r.metrics.get("tokens_per_s") for r in methods
                  if r.parameters["method"] == "ours, torch path, eager"), None)
    mem_col = "peak MiB" if gpu else "peak extra MiB (one step)"
    lines = [f"# Training step ({summary.device}, preset {s['preset']}, micro-batch {s['batch']} x {s['seq']}, "
             f"{s['precision']})", "", provenance_md(summary), "",
             f"One step = forward, loss, backward, AdamW; {s['steps']} timed steps after 3 warm-up steps (compilation "
             "included there). MFU = FLOPs per token (PaLM/nanoGPT count) x tokens/s / the GPU's bf16 peak.", ""]
    lines += headlines_md(rows)
    lines += [f"| method | tokens/s | vs ours torch eager | MFU | {mem_col} | loss |"
              + (f" largest micro-batch in {s['fit_gb']:g} GB |" if fits else ""),
              "|---|---:|---:|---:|---:|---:|" + ("---:|" if fits else "")]
    for r in methods:
        m = r.metrics
        if r.status == "ok":
            mem = m.get("peak_mib", m.get("peak_extra_mib"))
            cells = [f"{m['tokens_per_s']:,.0f}", f"{m['tokens_per_s'] / eager:.2f}x" if eager else "-",
                     f"{m['mfu']:.1%}" if m.get("mfu") else "-", f"{mem:,.0f}", f"{m['loss']:.3f}"]
        else:
            cells = [f"skipped ({r.reason})", "", "", "", ""]
        if fits:
            cells.append(str(m.get("largest_batch", "-")))
        lines.append(f"| {r.parameters['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_panel(ax, rows: list[Row]) -> None:
    """bench/report.py's figure: tokens/s per method."""
    summary = rows[-1]
    ran = [r for r in rows[:-1] if r.metrics.get("tokens_per_s")][::-1]
    ax.barh([r.parameters["method"] for r in ran], [r.metrics["tokens_per_s"] for r in ran], color="tab:blue")
    for y, r in enumerate(ran):
        ax.text(r.metrics["tokens_per_s"], y, f" {r.metrics['tokens_per_s']:,.0f}", va="center", fontsize=8)
    ax.set_xlabel("tokens/s (higher is better)")
    p = summary.parameters
    ax.set_title(f"training step, {p['preset']}, {p['batch']} x {p['seq']}")


def main(argv=None):
    p = cli(__doc__)
    p.add_argument("--preset", default=None, help="default: smollm2-135m on a GPU, tiny on a CPU")
    p.add_argument("--batch", type=int, default=None, help="micro-batch (default: 16 on a GPU, 8 on a CPU)")
    p.add_argument("--seq", type=int, default=None, help="sequence length (default: 1024 on a GPU, 256 on a CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on a GPU, 5 on a CPU)")
    p.add_argument("--fit-gb", type=float, default=24.0, help="GPU: memory for the largest-micro-batch search")
    p.add_argument("--no-fit", action="store_true", help="GPU: skip the largest-micro-batch search")
    p.add_argument("--out", default=RESULTS_DIR)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    preset = args.preset or ("smollm2-135m" if gpu else "tiny")
    b, t = args.batch or (16 if gpu else 8), args.seq or (1024 if gpu else 256)
    steps = args.steps or (20 if gpu else 5)
    cfg = get_preset(preset)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
    st = stamp("train_step", device)
    params = {"preset": preset, "batch": b, "seq": t, "steps": steps,
              "precision": "bf16 autocast, fused AdamW" if gpu else "fp32, AdamW"}
    measured = [(name, measure_row(name, builder, kernels, compiled, cfg, b, t, steps, device))
                for name, builder, kernels, compiled in ROWS]
    fits = {}
    if gpu and not args.no_fit:
        for name, builder, kernels, compiled in ROWS:
            if compiled and builder != "hf":  # plain transformers is Liger-patched by now (process-wide)
                fits[name] = largest_batch(builder, kernels, cfg, t, device, args.fit_gb)
                print(f"{name:<34} largest micro-batch x {t} in {args.fit_gb:g} GB: {fits[name]}", flush=True)
    rows = []
    for name, m in measured:
        reason = m.pop("skipped", None)
        if name in fits:
            m["largest_batch"] = fits[name]
        rows.append(st.row({"method": name, **params, **({"fit_gb": args.fit_gb} if name in fits else {})}, m,
                           status="skipped" if reason else "ok", reason=reason))
    ratios, heads = summarize(rows)
    rows.append(st.summary(heads, ratios, **params, **({"fit_gb": args.fit_gb} if fits else {})))
    return publish(args.out, rows, to_markdown(rows))


if __name__ == "__main__":
    sys.exit(main())
