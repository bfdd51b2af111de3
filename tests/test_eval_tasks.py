"""smollm/eval/tasks.py: records in each dataset's schema -> prompts and choices; the files they come
from, and every way a file can be wrong (one line naming the file, the line and the field)."""

import json

import pytest

from conftest import file_tree, one_line
from eval_records import RECORDS, SHIPPED, write_records
from smollm.eval.tasks import TASKS, build_item, load_items, parse_tasks


def test_prompts_are_lm_eval_harness_templates():
    hs = build_item(TASKS["hellaswag"], RECORDS["hellaswag"][1], "x")
    # [header]/[step] artifacts dropped, " [title]" made a sentence end; ctx_b capitalized as str.capitalize()
    # does it ("[step] if it" keeps its lower-case "if")
    assert hs.requests[0] == ("Home and Garden: How to water a plant. Check the soil. if it",
                              " is dry pour water slowly.")
    assert hs.choices[3] == " Eat the pot." and hs.gold == 0  # a leading "[title]" is only removed
    arc = build_item(TASKS["arc_challenge"], RECORDS["arc_challenge"][0], "x")
    assert arc.requests[2] == ("Question: Which planet is closest to the Sun?\nAnswer:", " Mercury") and arc.gold == 2
    wino = build_item(TASKS["winogrande"], RECORDS["winogrande"][0], "x")
    assert wino.requests == [("The trophy did not fit in the suitcase because the trophy", " was too big."),
                             ("The trophy did not fit in the suitcase because the suitcase", " was too big.")]
    csqa = build_item(TASKS["commonsense_qa"], RECORDS["commonsense_qa"][0], "x")
    assert csqa.requests[1] == ("Question: Where would you keep milk cold?\nA. oven\nB. refrigerator\nC. desk\n"
                                "D. car\nE. garden\nAnswer:", " B") and csqa.gold == 1
    obqa = build_item(TASKS["openbookqa"], RECORDS["openbookqa"][1], "x")
    assert obqa.gold == 1  # answerKey " B": stripped, as lm-eval does
    piqa = build_item(TASKS["piqa"], RECORDS["piqa"][1], "x")
    assert piqa.requests[1] == ("Question: How do you cool a hot drink quickly?\nAnswer:", " Add a few ice cubes to it.")
    assert build_item(TASKS["hellaswag"], {**RECORDS["hellaswag"][0], "label": 3}, "x").gold == 3  # int labels too


def test_the_shipped_items_are_whole():
    for name, task in TASKS.items():
        items = load_items(task, SHIPPED)
        assert len(items) == 16, name


def test_parquet_limit_and_the_same_items(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = load_items(TASKS["arc_easy"], write_records(tmp_path / "j", ["arc_easy"], shipped=4))
    pq.write_table(pa.Table.from_pylist(RECORDS["arc_easy"]), tmp_path / "arc_easy.parquet")
    assert load_items(TASKS["arc_easy"], str(tmp_path)) == jsonl[:2]
    assert load_items(TASKS["arc_easy"], str(tmp_path / "j"), limit=3) == jsonl[:3]


def test_unknown_task():
    with pytest.raises(ValueError) as e:
        parse_tasks("hellaswag,mmlu")
    assert one_line(str(e.value)).startswith("unknown task 'mmlu' (known: hellaswag, arc_easy")


def _error(tmp_path, name, text):
    (tmp_path / f"{name}.jsonl").write_text(text)
    before = file_tree(tmp_path)
    with pytest.raises((ValueError, OSError)) as e:
        load_items(TASKS[name], str(tmp_path))
    assert file_tree(tmp_path) == before  # nothing written, nothing lost
    return one_line(str(e.value))


def test_bad_files_are_one_line_naming_file_line_and_field(tmp_path):
    path = tmp_path / "piqa.jsonl"
    with pytest.raises(FileNotFoundError) as e:
        load_items(TASKS["piqa"], str(tmp_path))
    assert one_line(str(e.value)) == (f"{path}: no such file (nor .parquet); it holds piqa's records: baber/piqa "
                                      "(validation split): one record per line with goal (text), sol1 (text), "
                                      "sol2 (text), label (integer or digit text)")
    assert _error(tmp_path, "piqa", "\n\n") == (f"{path}: no records; expected baber/piqa (validation split): one "
                                                "record per line with goal (text), sol1 (text), sol2 (text), label "
                                                "(integer or digit text)")
    good = json.dumps(RECORDS["piqa"][0])
    msg = _error(tmp_path, "piqa", good + "\n" + json.dumps({"goal": "g", "sol1": "a", "label": 0}) + "\n")
    assert msg.startswith(f"{path}:2: no field 'sol2' (fields: ['goal', 'label', 'sol1']); expected baber/piqa")
    msg = _error(tmp_path, "piqa", good + "\n" + json.dumps({**RECORDS["piqa"][0], "label": "first"}) + "\n")
    assert msg.startswith(f"{path}:2: field 'label' is \"first\", not what piqa expects; expected baber/piqa")
    assert _error(tmp_path, "piqa", good + "\n{oops\n").startswith(f"{path}:2: not a JSON record (")
    assert _error(tmp_path, "piqa", "[1, 2]\n").startswith(f"{path}:1: a JSON list, not a piqa record; expected")
    arc = {**RECORDS["arc_easy"][0], "answerKey": "E"}
    assert _error(tmp_path, "arc_easy", json.dumps(arc)) == (
        f"{tmp_path / 'arc_easy.jsonl'}:1: answerKey 'E' is not one of the labels ['A', 'B', 'C', 'D']")
    wino = {**RECORDS["winogrande"][0], "sentence": "No blank here."}
    assert _error(tmp_path, "winogrande", json.dumps(wino)) == (
        f"{tmp_path / 'winogrande.jsonl'}:1: sentence has 0 blanks '_', not one")
    hs = {**RECORDS["hellaswag"][0], "label": "7"}
    assert _error(tmp_path, "hellaswag", json.dumps(hs)) == (
        f"{tmp_path / 'hellaswag.jsonl'}:1: the answer is choice 7, but there are 4 choices")
    with pytest.raises(FileNotFoundError) as e:
        load_items(TASKS["piqa"], str(tmp_path / "nowhere"))
    assert one_line(str(e.value)) == f"{tmp_path / 'nowhere'}: no such directory (the evaluation data: <task>.jsonl files)"


def test_a_dataset_saved_with_datasets_is_read_as_it_is(tmp_path):
    """What the README's one-liner writes (Dataset.to_json; to_parquet too) reads back as the records."""
    from datasets import Dataset

    for name in ("hellaswag", "arc_challenge", "commonsense_qa"):
        want = load_items(TASKS[name], write_records(tmp_path / "plain", [name]))
        Dataset.from_list(RECORDS[name]).to_json(str(tmp_path / "json" / f"{name}.jsonl"))
        Dataset.from_list(RECORDS[name]).to_parquet(str(tmp_path / "pq" / f"{name}.parquet"))
        assert load_items(TASKS[name], str(tmp_path / "json")) == want, name
        assert load_items(TASKS[name], str(tmp_path / "pq")) == want, name
