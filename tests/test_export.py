"""smollm/export.py: a trained run as a Hugging Face model directory with a model card."""

import os

import pytest
import torch
import yaml

import smollm.cli.train as CT
import smollm.training.loop as L
from conftest import micro_run_overrides


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory, dataset, gguf_path):
    from smollm.train_config import RunConfig, apply_overrides

    run = tmp_path_factory.mktemp("export") / "micro"
    L.train(apply_overrides(RunConfig(), micro_run_overrides(run, dataset, gguf_path)).validate())
    return run


def test_export_loads_in_transformers_and_generates(micro_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from smollm.weights import load_model

    out = tmp_path / "hf"
    assert CT.main(["export", str(micro_run), str(out)]) == 0
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md", "loss.png"):
        assert (out / name).is_file(), name
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = tok("def f(x):", return_tensors="pt").input_ids
    with torch.no_grad():
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             pad_token_id=tok.eos_token_id)
        assert gen.shape == (1, ids.shape[1] + 6) or tok.eos_token_id in gen[0, ids.shape[1]:].tolist()
        # The same weights as the run's latest checkpoint.
        ours = load_model(str(micro_run / "checkpoints" / "step_000006"))
        assert torch.allclose(model(ids).logits, ours(ids), atol=1e-5)


def test_model_card_is_written_from_the_run(micro_run, tmp_path):
    from smollm.export import export_run, run_stats

    out = export_run(str(micro_run), str(tmp_path / "hf"))
    card = open(os.path.join(out, "README.md")).read()
    assert card.startswith("---\n")
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "transformers" and front["license"] == "apache-2.0"
    assert "smollm2" in front["tags"] and front["pipeline_tag"] == "text-generation"
    stats = run_stats(str(micro_run))
    assert stats["steps"] == 6 and stats["tokens"] == 1536 and stats["train_seconds"] > 0
    for text in ("## Architecture", "## Training", "| tokens seen | 1,536 |", "![loss curve](loss.png)",
                 "## Samples", "| 6 | 1,536 |", "## Training configuration", "seq_len: 32", "tokens/s"):
        assert text in card, text
    info = yaml.safe_load(open(micro_run / "checkpoints" / "step_000006" / "checkpoint.json"))
    assert f"| final train loss | {info['loss']:.3f} |" in card
    assert f"| final validation loss | {info['val_loss']:.3f} |" in card


def test_export_errors(micro_run, tmp_path, capsys):
    assert CT.main(["export", str(tmp_path / "nope"), str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert CT.main(["export", str(micro_run), str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"  # nothing lost
    assert CT.main(["export", str(micro_run), str(out), "--checkpoint", str(tmp_path / "none")]) == 2
    assert "checkpoint" in capsys.readouterr().err
    assert CT.main(["export", str(micro_run), str(out), "--overwrite"]) == 0
    assert (out / "README.md").is_file() and not (out / "keep.txt").exists()


def test_card_names_the_hub_dataset_only_when_used():
    from smollm.config import get_preset
    from smollm.export import model_card

    cfg = get_preset("tiny").to_hf_dict()
    stats = {"train_seconds": 60.0, "tokens": 100, "steps": 1, "tokens_per_s": 1.7, "loss": 5.0, "val_loss": 5.1,
             "val_step": 1, "mfu": None}
    for source, want in ((["hf"], ["HuggingFaceTB/smollm-corpus"]), (["stdlib"], None)):
        card = model_card("x", cfg, {"data": {"source": source}}, {}, stats, [], 1, False)
        front = yaml.safe_load(card.split("---\n")[1])
        assert front.get("datasets") == want
        assert f"| data | {source[0]} |" in card
