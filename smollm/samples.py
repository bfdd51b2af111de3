"""The record of the text getting better: continuations of fixed prompts at every checkpoint, kept
as samples.jsonl (the data) and samples.md (the same, to read); and, after the fact, one prompt
through checkpoints of a run as a Markdown table (generate.py --checkpoints, the app)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import torch

from smollm.sources import load
from smollm.files import atomic_write_bytes, read_jsonl
from smollm.generate import Sampling, context_cap_note, generate
from smollm.checkpoint import read_info
from smollm.runs import RUN_CONFIG, Run


@torch.no_grad()
def continuations(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 0.0,
                  top_k: int | None = None, seed: int = 0) -> list[str]:
    """Each prompt continued on its own generator, so the text depends only on the weights and seed."""
    sampling = Sampling(temperature=temperature, top_k=top_k, seed=seed)
    out = []
    for prompt in prompts:
        new = generate(model, [tokenizer(prompt)["input_ids"]], max_new_tokens, sampling,
                       eos_id=tokenizer.eos_token_id)[0]
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


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def samples_markdown(records: list[dict], title: str) -> str:
    lines = [f"# Samples: {title}", "",
             "Each prompt continued by the checkpoint of that step (same prompts and seed every time). Train loss: "
             "the mean over the steps since the previous log line, as in metrics.jsonl.", ""]
    for r in records:
        lines += [f"## Step {r['step']:,} · {r['tokens']:,} tokens · train loss {_fmt(r.get('loss'), '.3f')} · "
                  f"val loss {_fmt(r.get('val_loss'), '.3f')}", ""]
        if isinstance(r.get("eval"), dict):
            lines += [eval_line(r["eval"]), ""]
        for prompt, text in zip(r["prompts"], r["texts"]):
            fence = "````" if "```" in prompt + text else "```"
            shown = json.dumps(prompt, ensure_ascii=False)  # newlines and spaces visible
            lines += [f"Prompt `{shown}`:", "", fence + "text", prompt + text, fence, ""]
    return "\n".join(lines)


def eval_line(record: dict) -> str:
    """'Benchmarks: average 32.1% · hellaswag 31.2 · ...' of an eval record (smollm.training.evaluation)."""
    tasks = record.get("tasks") or {}
    scores = " · ".join(f"{name} {100 * t['score']:.1f}" for name, t in tasks.items())
    n = {t["n"] for t in tasks.values()}
    items = f"{n.pop()} items each" if len(n) == 1 else "items: " + ", ".join(str(t["n"]) for t in tasks.values())
    return (f"Benchmarks (lm-eval-harness prompts; {items}; {record.get('data', '-')}): average "
            f"**{100 * record['average']['score']:.1f}%** · {scores}")


# --------------------------------------------------------- one prompt through checkpoints --

def checkpoint_info(ckpt: str) -> dict:
    """step, tokens seen and losses of one of our checkpoints (empty for other models; a damaged one is
    a CheckpointError naming its checkpoint.json)."""
    return read_info(ckpt) if os.path.isdir(ckpt) else {}


SAMPLE_KEYS = ("max_new_tokens", "temperature", "top_k", "seed")  # what a comparison takes from a run


def _sample_section(path: str) -> dict:
    """The sample section of the run configuration of a run directory or one of its checkpoints;
    empty for other models."""
    import yaml

    run_config = Run(path).config if os.path.isdir(Run(path).checkpoints) else os.path.join(path, RUN_CONFIG)
    try:
        with open(run_config) as f:
            sample = (yaml.safe_load(f) or {}).get("sample") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return {}
    return sample if isinstance(sample, dict) else {}


def sample_settings(path: str) -> dict:
    """max_new_tokens, temperature, top_k, seed of a run (or one of its checkpoints): how its own
    samples were drawn. Empty for other models."""
    sample = _sample_section(path)
    return {k: sample[k] for k in SAMPLE_KEYS if k in sample}


def sample_prompts(path: str) -> list[str]:
    """The prompts a run's own samples continue (empty for other models)."""
    prompts = _sample_section(path).get("prompts") or []
    return [p for p in prompts if isinstance(p, str)]


def checkpoint_heading(info: dict) -> str:
    return (f"step {_fmt(info.get('step'), ',')} · {_fmt(info.get('tokens'), ',')} tokens · "
            f"loss {_fmt(info.get('loss'), '.3f')} · val loss {_fmt(info.get('val_loss'), '.3f')}")


def compare_checkpoints(ckpts: list[str], prompt: str, max_new_tokens: int, sampling: Sampling,
                        tokenizer: str | None = None, kernels: str = "torch",
                        on_sample: Callable[[str, dict, str], None] | None = None,
                        on_note: Callable[[str], None] | None = None) -> str:
    """The same prompt and seed through each checkpoint: the Markdown table of the continuations.
    on_sample(checkpoint, its checkpoint_info, continuation) is called as each one is done;
    on_note(line) once, before generating, when the context caps max_new_tokens."""
    rows, notes = [], []
    for ckpt in ckpts:
        if not os.path.exists(ckpt):
            raise FileNotFoundError(f"checkpoint {ckpt} does not exist")
        info = checkpoint_info(ckpt)
        model, tok = load(ckpt, kernels=kernels, tokenizer=tokenizer)
        ids = tok(prompt)["input_ids"]
        note = context_cap_note(model, [ids], max_new_tokens)
        if note and note not in notes:
            notes.append(note)
            if on_note is not None:
                on_note(note)
        new = generate(model, [ids], max_new_tokens, sampling, eos_id=tok.eos_token_id)[0]
        text = tok.decode(new, skip_special_tokens=True)
        if on_sample is not None:
            on_sample(ckpt, info, text)
        rows.append((ckpt, info, text))
    return comparison_markdown(rows, prompt, max_new_tokens, sampling, notes)


def comparison_markdown(rows: list[tuple[str, dict, str]], prompt: str, max_new_tokens: int,
                        sampling: Sampling, notes: list[str] = ()) -> str:
    """rows: (checkpoint, its checkpoint_info, continuation); notes: lines said under the heading."""
    s = sampling
    how = "greedy" if s.temperature == 0 else (f"temperature {s.temperature}, top-k {s.top_k}, top-p {s.top_p}, "
                                              f"seed {s.seed}")
    lines = [f"Prompt `{json.dumps(prompt, ensure_ascii=False)}`, {max_new_tokens} new tokens, {how}"
             + (f", repetition penalty {s.repetition_penalty}" if s.repetition_penalty != 1 else "") + ".", "",
             *[f"Note: {n}." for n in notes], *([""] if notes else []),
             "| step | tokens | train loss | val loss | continuation |", "|---:|---:|---:|---:|---|"]
    for ckpt, info, text in rows:
        cell = (prompt + text).replace("|", "\\|").replace("\n", "<br>")
        step = _fmt(info.get("step"), ",") if info else os.path.basename(ckpt.rstrip("/"))
        lines.append(f"| {step} | {_fmt(info.get('tokens'), ',')} | {_fmt(info.get('loss'), '.3f')} | "
                     f"{_fmt(info.get('val_loss'), '.3f')} | {cell} |")
    return "\n".join(lines) + "\n"
