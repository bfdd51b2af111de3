"""Small evaluation files the tests write: a few records per task in each dataset's own schema, with
the cases a template can get wrong (WikiHow brackets, numeric ARC labels, three choices, a context
ending in a space, a blank followed by punctuation)."""

import json
import os

RECORDS = {
    "hellaswag": [
        {"ind": 1, "activity_label": "Baking cookies", "ctx_a": "A woman puts a tray of dough into the oven.",
         "ctx_b": "she", "ctx": "", "endings": ["sets a timer and waits for them to bake.", "throws the oven away.",
                                             "swims across the kitchen.", "paints the tray blue."],
         "source_id": "t-1", "split": "val", "split_type": "indomain", "label": "0"},
        {"ind": 2, "activity_label": "Home and Garden", "ctx_a": "[header] How to water a plant [title] Check the soil.",
         "ctx_b": "[step] if it", "ctx": "", "endings": [
             "is dry [substeps] pour water slowly.", "sings, dance with it.", "is a car, drive it.",
             "[title] Eat the pot."], "source_id": "t-2", "split": "val", "split_type": "zeroshot", "label": "0"},
        {"ind": 3, "activity_label": "Running", "ctx_a": "A man ties his shoes at the start line.", "ctx_b": "",
         "ctx": "", "endings": ["He reads a map of the moon.", "He starts running when the whistle blows.",
                                "He folds the track.", "He eats the whistle."],
         "source_id": "t-3", "split": "val", "split_type": "indomain", "label": "1"},
    ],
    "arc_easy": [
        {"id": "t1", "question": "Which of these is a liquid at room temperature?",
         "choices": {"text": ["ice", "water", "steam", "wood"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
        {"id": "t2", "question": "What do plants need to make food?",
         "choices": {"text": ["sunlight", "sand", "noise"], "label": ["A", "B", "C"]}, "answerKey": "A"},
    ],
    "arc_challenge": [
        {"id": "t3", "question": "Which planet is closest to the Sun?",
         "choices": {"text": ["Earth", "Mars", "Mercury", "Jupiter"], "label": ["1", "2", "3", "4"]}, "answerKey": "3"},
        {"id": "t4", "question": "A magnet attracts which of these?",
         "choices": {"text": ["a plastic cup", "an iron nail", "a glass jar", "a paper clip made of paper"],
                     "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    ],
    "piqa": [
        {"goal": "To keep bread fresh longer,", "sol1": "store it in a sealed bag.", "sol2": "leave it in the rain.",
         "label": 0},
        {"goal": "How do you cool a hot drink quickly?", "sol1": "Put it in the oven.",
         "sol2": "Add a few ice cubes to it.", "label": 1},
    ],
    "winogrande": [
        {"sentence": "The trophy did not fit in the suitcase because the _ was too big.", "option1": "trophy",
         "option2": "suitcase", "answer": "1"},
        {"sentence": "Anna gave Maria a book because _ had finished reading it.", "option1": "Anna",
         "option2": "Maria", "answer": "1"},
    ],
    "openbookqa": [
        {"id": "t5", "question_stem": "The sun is a ", "choices": {
            "text": ["planet", "star", "moon", "comet"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
        {"id": "t6", "question_stem": "Which of these conducts electricity best?", "choices": {
            "text": ["rubber", "copper wire", "wood", "cloth"], "label": ["A", "B", "C", "D"]}, "answerKey": " B"},
    ],
    "commonsense_qa": [
        {"id": "t7", "question": "Where would you keep milk cold? ", "question_concept": "milk",
         "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["oven", "refrigerator", "desk", "car", "garden"]},
         "answerKey": "B"},
        {"id": "t8", "question": "What do people use to cut paper?", "question_concept": "paper",
         "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["spoon", "pillow", "scissors", "cup", "shoe"]},
         "answerKey": "C"},
    ],
}

SHIPPED = os.path.join(os.path.dirname(__file__), "..", "smollm", "eval", "local")


def write_records(directory, tasks=None, shipped: int = 0, records=None) -> str:
    """DIR/<task>.jsonl of RECORDS (or `records`), plus the first `shipped` records of the repository's
    own files; returns DIR."""
    os.makedirs(directory, exist_ok=True)
    for name in tasks or RECORDS:
        rows = list((records or RECORDS)[name])
        if shipped:
            with open(os.path.join(SHIPPED, f"{name}.jsonl")) as f:
                rows += [json.loads(line) for line in f][:shipped]
        with open(os.path.join(directory, f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(directory)
