"""smollm.eval against lm-eval-harness itself: the same exported checkpoint (the real SmolLM2 weights),
the same records (files the test writes, read by lm-eval through task YAMLs that include its own task
of the same name with dataset_path: json), fp32 on the CPU. Every task: identical predictions (acc and
acc_norm, item by item), each choice's log-likelihood within 1e-4, the same means and standard errors."""

import os

import pytest
import yaml

from eval_records import write_records

import lm_eval  # a dev dependency: missing, this import fails (never a skip)
from lm_eval.tasks import TaskManager

TASK_YAML = {"hellaswag": "hellaswag/hellaswag.yaml", "arc_easy": "arc/arc_easy.yaml",
             "arc_challenge": "arc/arc_challenge.yaml", "piqa": "piqa/piqa.yaml",
             "winogrande": "winogrande/default.yaml", "openbookqa": "openbookqa/openbookqa.yaml",
             "commonsense_qa": "commonsense_qa/default.yaml"}
LL_TOL = 1e-4  # fp32: the two differ only in the order of their float operations


def _task_yamls(directory, data_dir) -> str:
    """A YAML per task that includes lm-eval's own and reads DATA/<task>.jsonl as its evaluation split."""
    from smollm.eval.tasks import TASKS

    os.makedirs(directory, exist_ok=True)
    root = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
    for name, rel in TASK_YAML.items():
        split = TASKS[name].hub[2]
        spec = {"include": os.path.join(root, rel), "task": f"local_{name}", "dataset_path": "json",
                "dataset_name": None, "dataset_kwargs": {"data_files": {split: os.path.join(data_dir, f"{name}.jsonl")}},
                "training_split": None, "fewshot_split": None,
                "validation_split": split if split == "validation" else None,
                "test_split": split if split == "test" else None}
        with open(os.path.join(directory, f"{name}.yaml"), "w") as f:
            yaml.safe_dump(spec, f)
    return str(directory)


def test_scores_agree_with_lm_eval_harness(tmp_path, ours_golden, tokenizer, monkeypatch):
    from smollm.eval.suite import evaluate
    from smollm.eval.tasks import TASKS
    from smollm.sources import load
    from smollm.weights import export_hf

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    model_dir = export_hf(ours_golden, tmp_path / "model", tokenizer)
    data = write_records(tmp_path / "data", shipped=3)
    theirs = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={model_dir},dtype=float32,device=cpu", batch_size=8, log_samples=True,
        tasks=[f"local_{n}" for n in TASK_YAML], task_manager=TaskManager(include_path=_task_yamls(tmp_path / "y", data)))
    model, tok = load(model_dir)
    ours = evaluate(model, tok, [TASKS[n] for n in TASK_YAML], data, batch_size=4)

    for name in TASK_YAML:
        samples = sorted(theirs["samples"][f"local_{name}"], key=lambda s: s["doc_id"])
        items = ours["items"][name]
        assert len(samples) == len(items) > 3, name
        for s, o in zip(samples, items):
            lls = [r[0] for r in s["filtered_resps"]]
            assert len(lls) == len(o["lls"]), (name, s["doc_id"])
            worst = max(abs(a - b) for a, b in zip(lls, o["lls"]))
            assert worst <= LL_TOL, (name, s["doc_id"], lls, o["lls"])
            assert s["acc"] == float(o["pred"] == o["gold"]), (name, s["doc_id"])
            if "acc_norm" in s:
                assert s["acc_norm"] == float(o["pred_norm"] == o["gold"]), (name, s["doc_id"])
            assert [r[1] for r in s["filtered_resps"]] == o["greedy"], (name, s["doc_id"])
        got, want = ours["tasks"][name], theirs["results"][f"local_{name}"]
        for metric in TASKS[name].metrics:
            assert got[metric] == pytest.approx(want[f"{metric},none"], abs=1e-12), (name, metric)
            assert got[f"{metric}_stderr"] == pytest.approx(want[f"{metric}_stderr,none"], rel=1e-9), (name, metric)
        assert set(TASKS[name].metrics) == {k.split(",")[0] for k in want if k.endswith(",none")
                                            and "stderr" not in k}, name
