"""A run as a Hugging Face model directory: `python train.py export RUN OUT [--checkpoint DIR]`.

OUT gets model.safetensors, config.json, the tokenizer files, loss.png and a README.md model card
written from the run itself (its config, tokens seen, training time, throughput, final losses, loss
curve, the benchmarks of eval.* and the samples table), so `AutoModelForCausalLM.from_pretrained(OUT)` loads it as it is and
`huggingface-cli upload` publishes it."""

from __future__ import annotations

import json
import os
import shutil

import yaml

from smollm.checkpoint import latest_checkpoint
from smollm.sources import load_resolved
from smollm.eval.results import is_eval_record, table
from smollm.files import atomic_dir
from smollm.metrics import read_metrics
from smollm.runs import LOSS_PNG, RUN_CONFIG, Run, run_of_checkpoint
from smollm.samples import checkpoint_info, read_samples
from smollm.weights import WEIGHTS_FILE, write_hf_files


def run_stats(run_dir: str) -> dict:
    """Training time, throughput and the last losses from the run's metrics.jsonl."""
    records = read_metrics(run_dir)
    train = [r for r in records if "loss" in r and "seconds_per_step" in r]
    seconds, prev = 0.0, 0
    for r in train:  # each record covers the steps since the previous one
        seconds += r["seconds_per_step"] * (r["step"] - prev)
        prev = r["step"]
    tokens = train[-1]["tokens"] if train else 0
    vals = [r for r in records if "val_loss" in r]
    return {"train_seconds": seconds, "tokens": tokens, "steps": train[-1]["step"] if train else 0,
            "tokens_per_s": tokens / seconds if seconds else None, "loss": train[-1]["loss"] if train else None,
            "val_loss": vals[-1]["val_loss"] if vals else None, "val_step": vals[-1]["step"] if vals else None,
            "mfu": train[-1].get("mfu") if train else None}


def _duration(seconds: float) -> str:
    h, rest = divmod(int(round(seconds)), 3600)
    return f"{h} h {rest // 60} min" if h else f"{rest // 60} min {rest % 60} s"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def _f(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _front_matter(sources: list[str]) -> list[str]:
    """The card's YAML header; the hub dataset named only when the run read it."""
    front = {"license": "apache-2.0", "library_name": "transformers", "pipeline_tag": "text-generation",
             "language": ["en"], "tags": ["smollm2", "llama", "pretrained-from-scratch", "smollm-triton"]}
    if any(x in ("hf", "cosmopedia-v2") or "smollm-corpus" in x for x in sources):
        front["datasets"] = ["HuggingFaceTB/smollm-corpus"]
    return ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", ""]


def _samples_section(samples: list[dict]) -> list[str]:
    """One table per prompt: its continuation at every checkpoint."""
    if not samples:
        return []
    lines = ["## Samples", "", "The same prompts and seed at every checkpoint of the run (from its samples.md).", ""]
    for i, prompt in enumerate(samples[0]["prompts"]):
        lines += [f"Prompt `{json.dumps(prompt, ensure_ascii=False)}`:", "",
                  "| step | tokens | val loss | continuation |", "|---:|---:|---:|---|"]
        for r in samples:
            lines.append(f"| {r['step']:,} | {r['tokens']:,} | {_f(r.get('val_loss'), '.3f')} | "
                         f"{_cell(prompt + r['texts'][i])} |")
        lines.append("")
    return lines


def _eval_section(m: dict | None) -> list[str]:
    """The benchmarks of the exported checkpoint (or the latest evaluation before it), with the
    published SmolLM2-135M rows beside them."""
    if m is None:
        return []
    e = m["eval"]
    return ["## Evaluation", "",
            f"Zero-shot, scored as lm-eval-harness scores these tasks (log-likelihood of each choice, its prompts) by "
            f"`python -m smollm.eval`, at step {m['step']:,} on {e.get('data', '-')}"
            + (f" (the first {e['limit']:,} records of each task)" if e.get("limit") else "") + ". The published "
            "rows come from the SmolLM2 model card (lighteval's prompts): a guide to where this run stands, not a "
            "match.", "", table(e), ""]


def model_card(name: str, cfg: dict, run_config: dict, info: dict, stats: dict, samples: list[dict],
               n_params: int, has_plot: bool, evaluation: dict | None = None) -> str:
    sources = run_config.get("data", {}).get("source") or []
    sources = [str(x) for x in (sources if isinstance(sources, list) else [sources])]
    lines = [*_front_matter(sources),
             f"# {name}", "",
             f"A SmolLM2-architecture model ({n_params:,} parameters) trained from scratch with "
             f"smollm-triton for {info.get('step', stats['steps']):,} steps, "
             f"{info.get('tokens', stats['tokens']):,} tokens. This card was written from the run's own records.", "",
             "## Use", "", "```python",
             "from transformers import AutoModelForCausalLM, AutoTokenizer",
             "", 'tok = AutoTokenizer.from_pretrained("PATH_OR_REPO_ID")',
             'model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO_ID")',
             'ids = tok("def fibonacci(n):", return_tensors="pt").input_ids',
             "print(tok.decode(model.generate(ids, max_new_tokens=40)[0]))", "```", "",
             "## Architecture", "", "| | |", "|---|---|",
             "| type | Llama decoder (LlamaForCausalLM), tied input/output embeddings |",
             f"| parameters | {n_params:,} |",
             f"| layers | {cfg['num_hidden_layers']} |", f"| hidden size | {cfg['hidden_size']} |",
             f"| attention heads / KV heads | {cfg['num_attention_heads']} / {cfg['num_key_value_heads']} "
             f"(head dim {cfg.get('head_dim', cfg['hidden_size'] // cfg['num_attention_heads'])}) |",
             f"| MLP | SwiGLU, {cfg['intermediate_size']} |", f"| vocabulary | {cfg['vocab_size']:,} |",
             f"| context | {cfg['max_position_embeddings']:,} positions, RoPE theta {cfg.get('rope_theta', '-')} |",
             "", "## Training", "", "| | |", "|---|---|",
             f"| checkpoint | step {_f(info.get('step'), ',')} |",
             f"| tokens seen | {_f(info.get('tokens', stats['tokens']), ',')} |",
             f"| training time | {_duration(stats['train_seconds']) if stats['train_seconds'] else '-'} "
             "(optimizer steps only; evaluation and checkpoints excluded) |",
             f"| throughput | {_f(stats['tokens_per_s'], ',.0f')} tokens/s |"]
    if stats.get("mfu"):
        lines.append(f"| MFU | {stats['mfu']:.1%} |")
    lines += [f"| final train loss | {_f(info.get('loss', stats['loss']), '.3f')} |",
              f"| final validation loss | {_f(info.get('val_loss', stats['val_loss']), '.3f')} |",
              f"| data | {', '.join(sources) or '-'} |", ""]
    lines += _eval_section(evaluation)
    if has_plot:
        lines += ["## Loss curve", "", f"![loss curve]({LOSS_PNG})", ""]
    lines += _samples_section(samples)
    lines += ["## Training configuration", "", "```yaml", yaml.safe_dump(run_config, sort_keys=False).strip(),
              "```", ""]
    return "\n".join(lines)


def _run_config(ckpt: str, run_dir: str) -> dict:
    """The run's configuration as the checkpoint saved it, else the run's config.yaml."""
    for path in (os.path.join(ckpt, RUN_CONFIG), Run(run_dir).config):
        if os.path.isfile(path):
            with open(path) as fh:
                return yaml.safe_load(fh) or {}
    return {}


class UnsafeOutputError(FileExistsError):
    """OUT is, contains or lies inside the run (or the checkpoint) being exported: writing it, and with
    --overwrite replacing it, would delete what is exported. A FileExistsError, so callers that
    report those report this too."""


def _inside(path: str, root: str) -> bool:
    return path != root and os.path.commonpath([path, root]) == root


def check_out_dir(out_dir: str, sources: list[str]) -> None:
    """UnsafeOutputError unless out_dir is apart from every source directory (real paths: symlinks
    and .. resolved)."""
    out = os.path.realpath(out_dir)
    for src in sources:
        real = os.path.realpath(src)
        if out == real:
            how = "is"
        elif _inside(real, out):
            how = "contains"
        elif _inside(out, real):
            how = "lies inside"
        else:
            continue
        raise UnsafeOutputError(f"refusing to export to {out_dir}: it {how} {real}, which the export reads "
                                f"(replacing it would delete the run); choose an output directory outside the run")


def export_run(run_dir: str, out_dir: str, checkpoint: str | None = None, overwrite: bool = False) -> str:
    """Write the model directory of the run's latest checkpoint (or `checkpoint`) to out_dir, which
    must lie apart from the run and the checkpoint (UnsafeOutputError)."""
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    ckpt = checkpoint or latest_checkpoint(run_dir)
    if ckpt is None and os.path.isfile(os.path.join(run_dir, WEIGHTS_FILE)):
        raise FileNotFoundError(f"{run_dir} is a checkpoint, not a run directory; export it with: train.py export "
                                f"RUN OUT --checkpoint {run_dir}")
    if ckpt is None or not os.path.isdir(ckpt):
        raise FileNotFoundError(f"no checkpoint to export in {run_dir}" if ckpt is None else
                                f"checkpoint {ckpt} does not exist")
    owner = run_of_checkpoint(ckpt)
    if owner is None or os.path.realpath(owner) != os.path.realpath(run_dir):
        where = f"it belongs to the run {owner}" if owner else "it lies in no run's checkpoints/ directory"
        fix = f"train.py export {owner} OUT --checkpoint {ckpt}" if owner else "train.py export RUN OUT with its own run"
        raise ValueError(f"--checkpoint {ckpt} is not a checkpoint of {run_dir} ({where}); the model card describes "
                         f"one run: export it with {fix}")
    check_out_dir(out_dir, [run_dir, ckpt])
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass --overwrite to replace it")
    # The checkpoint's own tokenizer, never a default; a run's damaged latest checkpoint is warned about
    # and its newest good one exported (as generate.py and --resume do).
    model, tokenizer, ckpt = load_resolved(checkpoint or run_dir, tokenizer=checkpoint)
    info = checkpoint_info(ckpt)
    samples = [r for r in read_samples(run_dir) if r["step"] <= info.get("step", float("inf"))]
    plot = Run(run_dir).loss_png
    scored = [m for m in read_metrics(run_dir) if is_eval_record(m.get("eval"))
              and m.get("step", 0) <= info.get("step", float("inf"))]
    card = model_card(Run(run_dir).title, model.config.to_hf_dict(), _run_config(ckpt, run_dir), info,
                      run_stats(run_dir), samples, model.num_params(), os.path.isfile(plot),
                      scored[-1] if scored else None)
    with atomic_dir(out_dir, overwrite) as tmp:
        write_hf_files(model, tmp, tokenizer)
        if os.path.isfile(plot):
            shutil.copyfile(plot, os.path.join(tmp, LOSS_PNG))
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(card)
    return out_dir
