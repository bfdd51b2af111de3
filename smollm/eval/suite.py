"""evaluate(): each task's items scored (scoring.py) and summed up (results.py)."""

from __future__ import annotations

import time

from smollm.eval.results import average, item_record, task_scores
from smollm.eval.scoring import loglikelihoods
from smollm.eval.tasks import Task, load_items


def evaluate(model, tokenizer, tasks: list[Task], data_dir: str | None = None, limit: int | None = None,
             batch_size: int = 16, device=None, progress=None, items: dict | None = None) -> dict:
    """{'tasks': {name: scores}, 'average': ..., 'items': {name: per-item records}, 'seconds', 'items_per_s'}.
    `items` (task name -> Items) skips loading; `progress(n)` is called as items finish."""
    loaded = items if items is not None else {t.name: load_items(t, data_dir, limit) for t in tasks}
    start = time.perf_counter()
    per_task, records = {}, {}
    for t in tasks:
        its = loaded[t.name]
        scored = loglikelihoods(model, tokenizer, [i.requests for i in its], batch_size, device, progress)
        records[t.name] = [item_record(i, s) for i, s in zip(its, scored)]
        per_task[t.name] = task_scores(t, records[t.name])
    seconds = time.perf_counter() - start
    n = sum(len(r) for r in records.values())
    return {"tasks": per_task, "average": average(per_task), "items": records, "seconds": seconds,
            "items_per_s": n / seconds if seconds > 0 else None}
