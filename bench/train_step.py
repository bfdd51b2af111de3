"""Training-step throughput, side by side in one run: a full step (forward, loss, backward, AdamW)
of our model on the torch path eager, the torch path compiled and the triton path compiled, against
transformers' LlamaForCausalLM compiled, with and without Liger-Kernel's patch; tokens/s, MFU and
peak memory. On a GPU: bf16 autocast and fused AdamW as the trainer runs them, micro-batch 16 x 1024
(the A10G run), and the largest micro-batch of 1024-token sequences that fits in 24 GB (the A10G's
memory; a larger card is capped with torch.cuda.set_per_process_memory_fraction).

On a CPU: the torch-path rows and transformers on a small preset (fp32), the triton and Liger rows
skipped (Triton's interpreter measures nothing).

    python bench/train_step.py [--preset smollm2-135m] [--batch 16] [--seq 1024] [--steps 10] [--fit-gb 24]
        # writes bench/results/train_step_<device>.{md,json}
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.measure import device_name, peak_extra_bytes, results_name, sync  # noqa: E402
from bench.results_io import write_results  # noqa: E402
from smollm.config import get_preset  # noqa: E402
from smollm.metrics import mfu  # noqa: E402
from smollm.model import SmolLM  # noqa: E402

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
    row = {"method": name, "batch": b, "seq": t}
    if device.type == "cpu" and (kernels == "triton" or builder == "hf-liger"):
        row["skipped"] = "CPU: Triton's interpreter checks correctness; its timings mean nothing"
        return row
    built = build(builder, kernels, cfg, device)
    if isinstance(built, str):
        row["skipped"] = built
        return row
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
        row["skipped"] = "out of memory"
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default=None, help="default: smollm2-135m on a GPU, tiny on a CPU")
    p.add_argument("--batch", type=int, default=None, help="micro-batch (default: 16 on a GPU, 8 on a CPU)")
    p.add_argument("--seq", type=int, default=None, help="sequence length (default: 1024 on a GPU, 256 on a CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on a GPU, 5 on a CPU)")
    p.add_argument("--fit-gb", type=float, default=24.0, help="GPU: memory for the largest-micro-batch search")
    p.add_argument("--no-fit", action="store_true", help="GPU: skip the largest-micro-batch search")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    preset = args.preset or ("smollm2-135m" if gpu else "tiny")
    b, t = args.batch or (16 if gpu else 8), args.seq or (1024 if gpu else 256)
    steps = args.steps or (20 if gpu else 5)
    cfg = get_preset(preset)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
    rows = [measure_row(name, builder, kernels, compiled, cfg, b, t, steps, device)
            for name, builder, kernels, compiled in ROWS]
    fits = {}
    if gpu and not args.no_fit:
        for name, builder, kernels, compiled in ROWS:
            if compiled and builder != "hf":  # plain transformers is Liger-patched by now (process-wide)
                fits[name] = largest_batch(builder, kernels, cfg, t, device, args.fit_gb)
                print(f"{name:<34} largest micro-batch x {t} in {args.fit_gb:g} GB: {fits[name]}", flush=True)

    def tps(name):
        r = next(r for r in rows if r["method"] == name)
        return r.get("tokens_per_s")

    ratios = {}
    tri, tc, hf, lg = (tps(n) for n in ("ours, triton path, compiled", "ours, torch path, compiled",
                                        "transformers, compiled", "transformers + Liger, compiled"))
    if tri and tc:
        ratios["triton_compiled_vs_torch_compiled"] = tri / tc
    if tri and lg:
        ratios["triton_compiled_vs_transformers_liger"] = tri / lg
    if tc and hf:
        ratios["torch_compiled_vs_transformers_compiled"] = tc / hf
    te = tps("ours, torch path, eager")
    if tc and te:
        ratios["torch_compiled_vs_torch_eager"] = tc / te
    mem_col = "peak MiB" if gpu else "peak extra MiB (one step)"
    lines = [f"# Training step ({device_name(device)}, preset {preset}, micro-batch {b} x {t}, "
             f"{'bf16 autocast, fused AdamW' if gpu else 'fp32, AdamW'})", "",
             f"One step = forward, loss, backward, AdamW; {steps} timed steps after 3 warm-up steps (compilation "
             "included there). MFU = FLOPs per token (PaLM/nanoGPT count) x tokens/s / the GPU's bf16 peak.", "",
             f"| method | tokens/s | vs ours torch eager | MFU | {mem_col} | loss |" + (" largest micro-batch in "
                                                                                        f"{args.fit_gb:g} GB |" if fits else ""),
             "|---|---:|---:|---:|---:|---:|" + ("---:|" if fits else "")]
    for r in rows:
        if "tokens_per_s" in r:
            mem = r.get("peak_mib", r.get("peak_extra_mib"))
            cells = [f"{r['tokens_per_s']:,.0f}", f"{r['tokens_per_s'] / te:.2f}x" if te else "-",
                     f"{r['mfu']:.1%}" if r.get("mfu") else "-", f"{mem:,.0f}", f"{r['loss']:.3f}"]
        else:
            cells = [f"skipped ({r['skipped']})", "", "", "", ""]
        if fits:
            cells.append(str(fits.get(r["method"], "-")))
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    lines += [""] + [f"- {k.replace('_', ' ')}: **{v:.2f}x**" for k, v in ratios.items()] + [""]
    md = "\n".join(lines)
    summary = {"device": device_name(device), "preset": preset, "batch": b, "seq": t, "steps": steps,
               "rows": rows, "largest_batch": fits, "fit_gb": args.fit_gb if fits else None, "ratios": ratios}
    write_results(args.out, f"train_step_{results_name(device)}", {"md": md, "json": json.dumps(summary, indent=1)})
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
