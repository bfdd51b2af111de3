"""smollm/training/evaluation.py: validation bits per byte, and the benchmarks of eval.* during a run:
in metrics.jsonl, samples.md, loss.png, the exported card and the app; continued by a resume; skipped
with one note when the data is missing."""

import json
import math

import smollm.cli.train as CT
import smollm.training.loop as L
from conftest import micro_run_overrides, sigterm_during_step
from eval_records import write_records
from smollm.metrics import read_metrics
from smollm.samples import read_samples
from smollm.train_config import RunConfig, apply_overrides
from smollm.training.evaluation import EVAL_SEED, token_bytes


def test_token_bytes_spell_the_text(tokenizer):
    nbytes = token_bytes(tokenizer, 49152)
    for text in ("def f(x):\n    return x ** 2  # square\n", "héllo wörld, 你好, naïve café ☕"):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert int(nbytes[ids].sum()) == len(text.encode()), text
    assert nbytes[0] == 0  # <|endoftext|>: no text


def _cfg(run, dataset, gguf_path, *extra):
    return apply_overrides(RunConfig(), micro_run_overrides(run, dataset, gguf_path, *extra)).validate()


def _scores(run) -> dict[int, dict]:
    return {m["step"]: m["eval"] for m in read_metrics(str(run)) if "eval" in m}


def test_validation_bits_per_byte(tmp_path, dataset, gguf_path, tokenizer):
    from smollm.data import TokenWindows

    L.train(_cfg(tmp_path / "run", dataset, gguf_path, "train.max_steps=1", "log.eval_batches=1"))
    first = next(m for m in read_metrics(str(tmp_path / "run")) if "val_bpb" in m)
    windows = TokenWindows(dataset, "val", 32)
    y = windows.get_batch(EVAL_SEED, 0, 4).y  # the one batch of validation windows: (4, 32)
    text_bytes = sum(len(tokenizer.decode(row.tolist(), skip_special_tokens=True).encode()) for row in y)
    want = first["val_loss"] * y.numel() / (math.log(2) * text_bytes)  # every target's nats over the text's bytes
    assert abs(first["val_bpb"] - want) <= 1e-9 * want


def test_scores_at_checkpoints_in_every_record(tmp_path, dataset, gguf_path, capsys):
    from smollm.app import run_scores

    data = write_records(tmp_path / "data", ["piqa", "winogrande"])
    run = tmp_path / "run"
    L.train(_cfg(run, dataset, gguf_path, "eval.tasks=[piqa, winogrande]", f"eval.data_dir={data}",
                 "eval.batch_size=2"))
    scores = _scores(run)
    assert sorted(scores) == [0, 3, 6]  # step 0 and each checkpoint
    assert set(scores[6]["tasks"]) == {"piqa", "winogrande"} and scores[6]["tasks"]["piqa"]["n"] == 2
    assert "eval average " in capsys.readouterr().out
    samples = read_samples(str(run))
    assert [s["eval"] for s in samples] == [scores[3], scores[6]]
    assert (run / "samples.md").read_text().count("Benchmarks (lm-eval-harness prompts; 2 items each;") == 2
    assert run_scores(str(run)).count("\n") == 1 + 3  # the header, its rule and a row per evaluation
    out = tmp_path / "hf"
    assert CT.main(["export", str(run), str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "## Evaluation" in card and "at step 6 on " in card
    assert "| SmolLM2-135M (model card, lighteval) | 68.4 | 51.3 |" in card
    from PIL import Image

    assert Image.open(run / "loss.png").size == (960, 900)  # two panels (a run without eval.tasks: 960 x 540)


def test_every_n_steps_and_a_resume_continues_the_scores(tmp_path, dataset, gguf_path, monkeypatch):
    data = write_records(tmp_path / "data", ["piqa"])
    extra = ("eval.tasks=[piqa]", f"eval.data_dir={data}", "eval.every=2")
    L.train(_cfg(tmp_path / "whole", dataset, gguf_path, *extra))
    whole = _scores(tmp_path / "whole")
    assert sorted(whole) == [0, 2, 4, 6]
    with monkeypatch.context() as m:
        sigterm_during_step(m, 3)
        L.train(_cfg(tmp_path / "resumed", dataset, gguf_path, *extra))
    assert CT.main(["--resume", str(tmp_path / "resumed")]) == 0
    resumed = _scores(tmp_path / "resumed")
    assert sorted(resumed) == [0, 2, 4, 6]
    for step in whole:  # the same weights (fp32, exact resume): the same scores
        assert resumed[step]["tasks"] == whole[step]["tasks"], step


def test_missing_data_is_said_once_and_the_run_trains_on(tmp_path, dataset, gguf_path, capsys):
    missing = tmp_path / "no-such-dir"
    summary = L.train(_cfg(tmp_path / "run", dataset, gguf_path, "eval.tasks=[hellaswag]", f"eval.data_dir={missing}"))
    assert summary["step"] == 6 and not _scores(tmp_path / "run")
    err = capsys.readouterr().err
    note = (f"note: eval: skipping the downstream evaluation ({missing}: no such directory (the evaluation data: "
            f"<task>.jsonl files)); training goes on")
    assert err.count(note) == 1, err
    assert json.loads((tmp_path / "run" / "samples.jsonl").read_text().splitlines()[-1])["step"] == 6
