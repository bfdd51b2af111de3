"""python -m smollm.eval (smollm/cli/eval.py): a model's scores printed and written as JSON; each
bad input one line on stderr, exit 2, and nothing written or lost."""

import json

import pytest
import torch

from conftest import file_tree, one_line
from eval_records import write_records
from smollm.cli.eval import main


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    from smollm.config import get_preset
    from smollm.model import SmolLM
    from smollm.weights import export_hf

    torch.manual_seed(0)
    return export_hf(SmolLM(get_preset("tiny")), tmp_path_factory.mktemp("m") / "tiny", tokenizer)


def test_scores_printed_and_written(tiny_dir, tmp_path, capsys):
    data = write_records(tmp_path / "data", ["piqa", "winogrande"], shipped=4)
    out = tmp_path / "scores.json"
    assert main(["--model", tiny_dir, "--tasks", "piqa,winogrande", "--data-dir", data, "--limit", "5",
                 "--batch-size", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(result["tasks"]) == {"piqa", "winogrande"} and result["tasks"]["piqa"]["n"] == 5
    assert len(result["items"]["winogrande"]) == 5 and result["limit"] == 5 and result["data"] == data
    assert f"| piqa | 5 | acc_norm | {100 * result['tasks']['piqa']['acc_norm']:.1f} |" in printed
    assert "| **average** | 2 tasks |" in printed and f"wrote {out}" in printed


def _fails(argv, capsys, root) -> str:
    before = file_tree(root)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert file_tree(root) == before  # nothing written, nothing lost
    return one_line(err)


def test_bad_input_is_one_line(tiny_dir, tmp_path, capsys):
    data = write_records(tmp_path / "data", ["piqa"])
    out = tmp_path / "kept.json"
    out.write_text("{}")
    m = ["--model", tiny_dir, "--data-dir", data]
    p = "python -m smollm.eval: error: "
    assert _fails([*m, "--tasks", "piqa,squad"], capsys, tmp_path).startswith(f"{p}unknown task 'squad' (known: ")
    assert _fails([*m, "--tasks", "hellaswag"], capsys, tmp_path).startswith(
        f"{p}{data}/hellaswag.jsonl: no such file (nor .parquet); it holds hellaswag's records: Rowan/hellaswag")
    (tmp_path / "data" / "arc_easy.jsonl").write_text(json.dumps({"question": "q", "answerKey": "A"}) + "\n")
    assert _fails([*m, "--tasks", "arc_easy"], capsys, tmp_path).startswith(
        f"{p}{data}/arc_easy.jsonl:1: no field 'choices' (fields: ['answerKey', 'question']); expected allenai/ai2_arc")
    (tmp_path / "data" / "openbookqa.jsonl").write_text("")
    assert _fails([*m, "--tasks", "openbookqa"], capsys, tmp_path).startswith(f"{p}{data}/openbookqa.jsonl: no records")
    assert _fails([*m, "--tasks", "piqa", "--out", str(out)], capsys, tmp_path) == (
        f"{p}--out {out} exists; pass --overwrite to replace it")
    assert _fails([*m, "--tasks", "piqa", "--limit", "0"], capsys, tmp_path) == f"{p}--limit must be at least 1, got 0"
    assert _fails(["--model", str(tmp_path / "nothing"), "--tasks", "piqa", "--data-dir", data], capsys,
                  tmp_path) == f"{p}--model {tmp_path / 'nothing'}: no such file or directory"
