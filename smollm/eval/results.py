"""Scores from log-likelihoods, as lm-eval-harness reports them: per item the prediction (argmax of the
choices' log-likelihoods; acc_norm divides each by its choice's length in characters first; the first
of equal scores wins), per task the mean with its standard error (sample standard deviation over
sqrt(n)), and the macro average of the tasks' headline metrics (acc_norm where reported, else acc),
whose standard error treats the tasks as independent: sqrt(sum of squared errors) / k."""

from __future__ import annotations

import math

from smollm.eval.scoring import Scored
from smollm.eval.tasks import Item, Task

# The published SmolLM2-135M row (its model card: zero-shot, lighteval; ARC is the average of Easy
# and Challenge), for a table beside ours. lighteval's prompts are not lm-eval's: a guide, not a match.
PUBLISHED = {
    "SmolLM2-135M": {"hellaswag": 42.1, "arc": 43.9, "piqa": 68.4, "winogrande": 51.3, "openbookqa": 34.6,
                     "commonsense_qa": 33.9},
    "SmolLM-135M": {"hellaswag": 41.2, "arc": 42.4, "piqa": 68.4, "winogrande": 51.3, "openbookqa": 34.0,
                    "commonsense_qa": 32.7},
}


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def item_record(item: Item, scored: list[Scored]) -> dict:
    lls = [s.loglikelihood for s in scored]
    norm = [ll / max(len(c), 1) for ll, c in zip(lls, item.choices)]
    return {"gold": item.gold, "lls": lls, "pred": _argmax(lls), "pred_norm": _argmax(norm),
            "greedy": [s.greedy for s in scored]}


def _mean_stderr(xs: list[float]) -> tuple[float, float | None]:
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return mean, None
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, math.sqrt(var / n)


def task_scores(task: Task, records: list[dict]) -> dict:
    """{'n', 'acc', 'acc_stderr', ['acc_norm', 'acc_norm_stderr'], 'metric', 'score'} of one task."""
    out: dict = {"n": len(records)}
    for metric, key in (("acc", "pred"), ("acc_norm", "pred_norm")):
        if metric in task.metrics:
            out[metric], out[metric + "_stderr"] = _mean_stderr([float(r[key] == r["gold"]) for r in records])
    out["metric"], out["score"] = task.headline, out[task.headline]
    return out


def average(per_task: dict[str, dict]) -> dict:
    scores = [t["score"] for t in per_task.values()]
    errs = [t[t["metric"] + "_stderr"] for t in per_task.values()]
    stderr = math.sqrt(sum(e * e for e in errs)) / len(errs) if all(e is not None for e in errs) else None
    return {"score": sum(scores) / len(scores), "stderr": stderr, "tasks": len(scores)}


def comparable(per_task: dict[str, dict]) -> dict[str, float]:
    """Our scores in percent under the published rows' names (ARC: the mean of Easy and Challenge,
    when both ran)."""
    out = {name: 100 * t["score"] for name, t in per_task.items() if not name.startswith("arc_")}
    if "arc_easy" in per_task and "arc_challenge" in per_task:
        out["arc"] = 50 * (per_task["arc_easy"]["score"] + per_task["arc_challenge"]["score"])
    return out


def is_eval_record(e) -> bool:
    """Whether e is a whole scores record ({'tasks': {name: {..., 'score'}}, 'average': {'score'}}): one
    read from a run's metrics.jsonl may have been cut short or edited."""
    return (isinstance(e, dict) and isinstance(e.get("average"), dict)
            and isinstance(e["average"].get("score"), (int, float)) and isinstance(e.get("tasks"), dict)
            and all(isinstance(t, dict) and isinstance(t.get("score"), (int, float)) and isinstance(t.get("n"), int)
                    and t.get("metric") in t for t in e["tasks"].values()))


def table(result: dict, published: bool = True) -> str:
    """A Markdown table of a result: per task the headline metric with its error, then the average;
    with the published SmolLM2-135M / SmolLM-135M rows (percent) when asked."""
    lines = ["| task | n | metric | score | ± |", "|---|---:|---|---:|---:|"]
    for name, t in result["tasks"].items():
        err = t[t["metric"] + "_stderr"]
        shown = "" if err is None else f"{100 * err:.1f}"
        lines.append(f"| {name} | {t['n']} | {t['metric']} | {100 * t['score']:.1f} | {shown} |")
    a = result["average"]
    err = "" if a["stderr"] is None else f"{100 * a['stderr']:.1f}"
    lines.append(f"| **average** | {a['tasks']} tasks | | **{100 * a['score']:.1f}** | {err} |")
    if published:
        ours = comparable(result["tasks"])
        names = [n for n in PUBLISHED["SmolLM2-135M"] if n in ours]
        if names:
            lines += ["", "| model | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names),
                      "| this model (lm-eval prompts) | " + " | ".join(f"{ours[n]:.1f}" for n in names) + " |"]
            lines += [f"| {m} (model card, lighteval) | " + " | ".join(f"{row[n]:.1f}" for n in names) + " |"
                      for m, row in PUBLISHED.items()]
    return "\n".join(lines)


def history_table(records: list[dict]) -> str:
    """A run's scores through training: one row per evaluation (metrics.jsonl records with 'eval'):
    step, tokens, each task's headline score and the average, in percent."""
    rows = [r for r in records if is_eval_record(r.get("eval"))]
    if not rows:
        return ""
    names = list(dict.fromkeys(k for r in rows for k in r["eval"]["tasks"]))
    lines = ["| step | tokens | " + " | ".join(names) + " | average |", "|---:|---:|" + "---:|" * (len(names) + 1)]
    for r in rows:
        tasks = r["eval"]["tasks"]
        cells = [f"{100 * tasks[n]['score']:.1f}" if n in tasks else "-" for n in names]
        lines.append(f"| {r.get('step', '-'):,} | {r.get('tokens', 0):,} | " + " | ".join(cells)
                     + f" | **{100 * r['eval']['average']['score']:.1f}** |")
    return "\n".join(lines)
