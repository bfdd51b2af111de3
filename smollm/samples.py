"""The record of the text getting better: continuations of fixed prompts at every checkpoint, kept
as samples.jsonl (the data) and samples.md (the same, to read)."""

from __future__ import annotations

import json

import torch

from smollm.files import atomic_write_bytes, read_jsonl
from smollm.runs import Run
from smollm.generate import Sampling, generate


@torch.no_grad()
def continuations(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 0.0,
                  top_k: int | None = None, seed: int = 0) -> list[str]:
    """Each prompt continued on its own generator, so the text depends only on the weights and seed."""
    sampling = Sampling(temperature=temperature, top_k=top_k, seed=seed)
    out = []
    for prompt in prompts:
        # The training model keeps its weights' layout: a resumed run must compute exactly the same.
        new = generate(model, [tokenizer(prompt)["input_ids"]], max_new_tokens, sampling,
                       eos_id=tokenizer.eos_token_id, tune_layout=False)[0]
        out.append(tokenizer.decode(new))
    return out


def read_samples(run_dir: str) -> list[dict]:
    return read_jsonl(Run(run_dir).samples_jsonl)


def write_samples(run_dir: str, records: list[dict], title: str) -> None:
    run = Run(run_dir)
    atomic_write_bytes(run.samples_jsonl, [(json.dumps(r) + "\n").encode() for r in records])
    atomic_write_bytes(run.samples_md, [samples_markdown(records, title).encode()])


def add_samples(run_dir: str, record: dict, title: str) -> None:
    """Append one checkpoint's samples (replacing any earlier record of the same step)."""
    records = [r for r in read_samples(run_dir) if r["step"] != record["step"]] + [record]
    write_samples(run_dir, sorted(records, key=lambda r: r["step"]), title)


def truncate_samples_after(run_dir: str, step: int, title: str) -> None:
    records = read_samples(run_dir)
    if any(r["step"] > step for r in records):
        write_samples(run_dir, [r for r in records if r["step"] <= step], title)


def _fmt_loss(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def samples_markdown(records: list[dict], title: str) -> str:
    lines = [f"# Samples: {title}", "",
             "Each prompt continued by the checkpoint of that step (same prompts and seed every time).", ""]
    for r in records:
        lines += [f"## Step {r['step']:,} · {r['tokens']:,} tokens · train loss {_fmt_loss(r.get('loss'))} · "
                  f"val loss {_fmt_loss(r.get('val_loss'))}", ""]
        for prompt, text in zip(r["prompts"], r["texts"]):
            fence = "````" if "```" in prompt + text else "```"
            shown = json.dumps(prompt, ensure_ascii=False)  # newlines and spaces visible
            lines += [f"Prompt `{shown}`:", "", fence + "text", prompt + text, fence, ""]
    return "\n".join(lines)
