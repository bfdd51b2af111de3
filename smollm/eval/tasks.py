"""The multiple-choice benchmarks, each built as lm-eval-harness builds its task of the same name
(zero-shot): the same prompt, the same preprocessing, the same target delimiter (" "), the same split.

A task turns one record of its dataset, in the Hugging Face dataset's own schema, into an Item: one
(context, continuation) pair per choice, the gold index, and the choice texts whose lengths acc_norm
divides by (lm-eval: the characters of each choice). Records come from the Hub by the dataset's name
(through `datasets`), or from DIR/<task>.jsonl or .parquet in the same schema (`ds.to_json(...)` of the
dataset saved once), so an offline machine scores the same records.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Callable

DELIMITER = " "  # lm-eval's target_delimiter: between a context and each continuation


@dataclass(frozen=True)
class Item:
    requests: list[tuple[str, str]]  # (context, continuation), one per choice
    gold: int
    choices: list[str]  # what acc_norm measures the length of (lm-eval's doc_to_choice)


@dataclass(frozen=True)
class Task:
    name: str
    hub: tuple[str, str | None, str]  # (dataset, config, split) on the Hugging Face Hub
    schema: dict[str, str]  # field -> its kind (str, int, label, list, choices), checked per record
    build: Callable[[dict], Item]
    metrics: tuple[str, ...]  # as lm-eval's task reports them

    @property
    def headline(self) -> str:
        """The metric the average takes: acc_norm where the task reports it (as the SmolLM2 card's
        rows do for the tasks that have it), else acc."""
        return "acc_norm" if "acc_norm" in self.metrics else "acc"


def _choice_item(context: str, choices: list[str], gold: int) -> Item:
    return Item([(context, DELIMITER + c) for c in choices], gold, list(choices))


def _hellaswag_clean(text: str) -> str:
    """lm-eval's hellaswag preprocessing: WikiHow's bracketed artifacts out, a title as a sentence."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(doc: dict) -> Item:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    query = _hellaswag_clean(doc["activity_label"] + ": " + ctx)
    return _choice_item(query, [_hellaswag_clean(e) for e in doc["endings"]], int(doc["label"]))


def _labelled(doc: dict, question: str) -> Item:
    """ARC and OpenBookQA: the choices' texts as continuations, gold = the answer key's label."""
    labels, key = doc["choices"]["label"], doc["answerKey"].lstrip()
    if key not in labels:
        raise ValueError(f"answerKey {key!r} is not one of the labels {labels}")
    return _choice_item(question, doc["choices"]["text"], labels.index(key))


def _arc(doc: dict) -> Item:
    return _labelled(doc, f"Question: {doc['question']}\nAnswer:")


def _piqa(doc: dict) -> Item:
    return _choice_item(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], int(doc["label"]))


def _winogrande(doc: dict) -> Item:
    """Partial scoring: the blank filled with each option is the context, the rest of the sentence the
    continuation, the same for both."""
    sentence = doc["sentence"]
    if sentence.count("_") != 1:
        raise ValueError(f"sentence has {sentence.count('_')} blanks '_', not one")
    i = sentence.index("_")
    contexts = [sentence[:i] + doc["option1"], sentence[:i] + doc["option2"]]
    rest = DELIMITER + sentence[i + 1:].strip()
    if doc["answer"] not in ("1", "2"):
        raise ValueError(f"answer {doc['answer']!r} is not '1' or '2'")
    return Item([(c, rest) for c in contexts], int(doc["answer"]) - 1, contexts)


def _openbookqa(doc: dict) -> Item:
    return _labelled(doc, doc["question_stem"])


def _commonsense_qa(doc: dict) -> Item:
    texts = doc["choices"]["text"]
    if len(texts) != 5:
        raise ValueError(f"choices.text has {len(texts)} entries, not 5")
    letters = ["A", "B", "C", "D", "E"]
    listed = "".join(f"\n{a}. {t}" for a, t in zip(letters, texts))
    if doc["answerKey"] not in letters:
        raise ValueError(f"answerKey {doc['answerKey']!r} is not one of {letters}")
    return _choice_item(f"Question: {doc['question'].strip()}{listed}\nAnswer:", letters,
                        letters.index(doc["answerKey"]))


_ARC = {"question": "str", "choices": "choices", "answerKey": "str"}
TASKS: dict[str, Task] = {t.name: t for t in [
    Task("hellaswag", ("Rowan/hellaswag", None, "validation"),
         {"activity_label": "str", "ctx_a": "str", "ctx_b": "str", "endings": "list", "label": "label"},
         _hellaswag, ("acc", "acc_norm")),
    Task("arc_easy", ("allenai/ai2_arc", "ARC-Easy", "test"), _ARC, _arc, ("acc", "acc_norm")),
    Task("arc_challenge", ("allenai/ai2_arc", "ARC-Challenge", "test"), _ARC, _arc, ("acc", "acc_norm")),
    Task("piqa", ("baber/piqa", None, "validation"), {"goal": "str", "sol1": "str", "sol2": "str", "label": "label"},
         _piqa, ("acc", "acc_norm")),
    Task("winogrande", ("allenai/winogrande", "winogrande_xl", "validation"),
         {"sentence": "str", "option1": "str", "option2": "str", "answer": "str"}, _winogrande, ("acc",)),
    Task("openbookqa", ("allenai/openbookqa", "main", "test"),
         {"question_stem": "str", "choices": "choices", "answerKey": "str"}, _openbookqa, ("acc", "acc_norm")),
    Task("commonsense_qa", ("tau/commonsense_qa", None, "validation"),
         {"question": "str", "choices": "choices", "answerKey": "str"}, _commonsense_qa, ("acc",)),
]}
DEFAULT_TASKS = list(TASKS)


def parse_tasks(spec: str | list[str]) -> list[Task]:
    """'hellaswag,piqa' (or a list) -> the tasks; an unknown name is one line listing the known ones."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    if not names:
        raise ValueError(f"no task given (known: {', '.join(TASKS)})")
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r} (known: {', '.join(TASKS)})")
    return [TASKS[n] for n in dict.fromkeys(names)]


def schema_line(task: Task) -> str:
    """'Rowan/hellaswag (validation): activity_label (text), ...': what a task's file holds."""
    kinds = {"str": "text", "int": "integer", "label": "integer or digit text", "list": "list of texts",
             "choices": "{text: [...], label: [...]}"}
    path, config, split = task.hub
    fields = ", ".join(f"{k} ({kinds[v]})" for k, v in task.schema.items())
    return f"{path}{'/' + config if config else ''} ({split} split): one record per line with {fields}"


def _kind_ok(value, kind: str) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "label":
        return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value.isdigit())
    if kind == "list":
        return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)
    # choices: parallel lists of texts and labels
    return (isinstance(value, dict) and all(isinstance(value.get(k), list) for k in ("text", "label"))
            and len(value["text"]) == len(value["label"]) > 0
            and all(isinstance(v, str) for v in value["text"] + value["label"]))


def build_item(task: Task, doc, where: str) -> Item:
    """A record -> its Item; a record outside the task's schema is one line naming where it is."""
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: a JSON {type(doc).__name__}, not a {task.name} record; expected "
                         f"{schema_line(task)}")
    for key, kind in task.schema.items():
        if key not in doc:
            raise ValueError(f"{where}: no field {key!r} (fields: {sorted(doc)}); expected {schema_line(task)}")
        if not _kind_ok(doc[key], kind):
            raise ValueError(f"{where}: field {key!r} is {json.dumps(doc[key], default=str)[:60]}, not what "
                             f"{task.name} expects; expected {schema_line(task)}")
    try:
        item = task.build(doc)
    except (ValueError, IndexError, KeyError) as e:
        raise ValueError(f"{where}: {e}") from None
    if not 0 <= item.gold < len(item.requests):
        raise ValueError(f"{where}: the answer is choice {item.gold}, but there are {len(item.requests)} choices")
    return item


def task_file(data_dir: str, task: Task) -> str:
    """DIR/<task>.jsonl (or .parquet, .json); a missing one is one line naming it and its schema."""
    for ext in (".jsonl", ".parquet", ".json"):
        path = os.path.join(data_dir, task.name + ext)
        if os.path.isfile(path):
            return path
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"{data_dir}: no such directory (the evaluation data: <task>.jsonl files)")
    raise FileNotFoundError(f"{os.path.join(data_dir, task.name + '.jsonl')}: no such file (nor .parquet); it holds "
                            f"{task.name}'s records: {schema_line(task)}")


def _file_records(path: str):
    """(where, record) of a .jsonl/.json (one object per line) or .parquet file."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        for n, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield f"{path}: row {n}", row
        return
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield f"{path}:{n}", json.loads(raw)
            except ValueError as e:  # bad JSON or bad UTF-8
                raise ValueError(f"{path}:{n}: not a JSON record ({e})") from None


def _hub_records(task: Task):
    from datasets import load_dataset

    path, config, split = task.hub
    try:
        from huggingface_hub import HfApi

        HfApi().dataset_info(path, timeout=10)  # one quick look: datasets retries for half a minute offline
        ds = load_dataset(path, config, split=split)
    except Exception as e:
        raise OSError(f"cannot load {path}{'/' + config if config else ''} ({split}) from the Hugging Face Hub "
                      f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}); save it once where the "
                      f"network answers and pass --data-dir (README: Evaluation)") from None
    for n, row in enumerate(ds, 1):
        yield f"{path} ({split}) row {n}", row


def load_items(task: Task, data_dir: str | None, limit: int | None = None) -> list[Item]:
    """The task's first `limit` records (all when None) as Items, from data_dir or the Hub."""
    where = task_file(data_dir, task) if data_dir else None
    items = []
    for at, doc in (_file_records(where) if where else _hub_records(task)):
        if limit is not None and len(items) >= limit:
            break
        items.append(build_item(task, doc, at))
    if not items:
        raise ValueError(f"{where or task.hub[0]}: no records; expected {schema_line(task)}")
    return items
