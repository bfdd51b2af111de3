"""Faults of generation, made on purpose: more new tokens than the context holds, a prompt that fills
it, a tokenizer bigger than the model's vocabulary, an --out that cannot be written, a corrupt
checkpoint in the app, a model path that does not exist. Each is one line naming the
value or file, and nothing finished is lost."""

import dataclasses
import errno
import os
import subprocess
import sys

import pytest
import torch

import smollm.files
import smollm.cli.generate as G
from conftest import one_line
from smollm.config import get_preset
from smollm.model import SmolLM
from smollm.weights import export_hf

PROMPT = "def fibonacci(n):"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _export(path, tokenizer, **changes):
    torch.manual_seed(0)
    model = SmolLM(dataclasses.replace(get_preset("tiny"), **changes)).eval()
    return export_hf(model, path, tokenizer)


@pytest.fixture(scope="module")
def n_prompt(tokenizer):
    return len(tokenizer(PROMPT)["input_ids"])


@pytest.fixture(scope="module")
def small_ctx(tmp_path_factory, tokenizer, n_prompt):
    """A tiny model (the real tokenizer) whose context is the prompt + 5 positions."""
    return _export(tmp_path_factory.mktemp("m") / "ctx", tokenizer, max_position_embeddings=n_prompt + 5)


# ------------------------------------------------------------------- 1. the context --

def test_max_new_tokens_beyond_the_context_says_it_is_capped(small_ctx, n_prompt, capsys):
    assert G.main(["--model", small_ctx, "--prompt", PROMPT, "--max-new-tokens", "100000", "--no-stream"]) == 0
    out = capsys.readouterr().out
    line = [x for x in out.splitlines() if "capped" in x]
    assert line == [f"--max-new-tokens 100000 capped at 5 (context {n_prompt + 5} - prompt length {n_prompt})"]
    assert "--- 5 new tokens" in out  # still generates what fits


def test_a_prompt_that_fills_the_context_is_an_error(tmp_path, tokenizer, n_prompt, capsys):
    full = _export(tmp_path / "full", tokenizer, max_position_embeddings=n_prompt)
    with pytest.raises(SystemExit) as e:
        G.main(["--model", full, "--prompt", PROMPT, "--max-new-tokens", "4"])
    assert e.value.code == 2
    err = one_line(capsys.readouterr().err)  # no usage block before it
    assert err.endswith(f"the prompt fills the model's context ({n_prompt} positions); no room for new tokens")


def test_the_cap_is_said_when_comparing_checkpoints_too(small_ctx, n_prompt, tmp_path, capsys):
    out = tmp_path / "cmp.md"
    assert G.main(["--checkpoints", small_ctx, "--prompt", PROMPT, "--max-new-tokens", "100000", "--out",
                   str(out)]) == 0
    note = f"--max-new-tokens 100000 capped at 5 (context {n_prompt + 5} - prompt length {n_prompt})"
    printed = capsys.readouterr().out
    assert [x for x in printed.splitlines() if "capped" in x] == [note]
    assert printed.index(note) < printed.index("===")  # said before the generation, not after
    assert f"Note: {note}." in out.read_text()  # and in the table written


def test_no_note_when_the_tokens_fit(small_ctx, capsys):
    assert G.main(["--model", small_ctx, "--prompt", PROMPT, "--max-new-tokens", "3", "--no-stream"]) == 0
    assert "capped" not in capsys.readouterr().out


# ------------------------------------------------------------ 2. the tokenizer's vocabulary --

def test_a_tokenizer_bigger_than_the_vocabulary_is_refused(tmp_path, tokenizer, capsys):
    from smollm.sources import load

    small = _export(tmp_path / "v1000", tokenizer, vocab_size=1000)
    with pytest.raises(ValueError) as e:
        load(small)
    msg = one_line(str(e.value))
    assert "49,152 tokens" in msg and "(1,000)" in msg and small in msg
    with pytest.raises(SystemExit) as e:
        G.main(["--model", small, "--prompt", PROMPT, "--max-new-tokens", "2"])
    assert e.value.code == 2
    err = one_line(capsys.readouterr().err)  # no usage block before it
    assert "49,152 tokens" in err and "(1,000)" in err and f"tokenizer {small}" in err


# ------------------------------------------------------------------ 3. --out --

def _compare(ckpt, out):
    return G.main(["--checkpoints", ckpt, "--prompt", PROMPT, "--max-new-tokens", "3", "--out", str(out)])


def test_out_in_a_missing_directory_is_created(small_ctx, tmp_path, capsys):
    out = tmp_path / "missing" / "dir" / "x.md"
    assert _compare(small_ctx, out) == 0
    assert "| continuation |" in out.read_text() and f"wrote {out}" in capsys.readouterr().out


def test_out_that_cannot_be_created_fails_before_generating(small_ctx, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit) as e:
        _compare(small_ctx, tmp_path / "afile" / "x.md")
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert "===" not in captured.out  # nothing generated
    assert str(tmp_path / "afile") in one_line(captured.err)


def test_a_failed_write_prints_the_table(small_ctx, tmp_path, capsys, monkeypatch):
    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(smollm.files, "atomic_write_text", full)
    out = tmp_path / "x.md"
    assert _compare(small_ctx, out) == 1
    captured = capsys.readouterr()
    assert "| continuation |" in captured.out and not out.exists()  # the table is not lost
    assert one_line(captured.err) == (f"error: could not write {out} (No space left on device); "
                                       "the table is printed above")


# ------------------------------------------------------------------ 4. the app --

def _tree(root) -> dict[str, bytes]:
    out = {}
    for d, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(d, name), "rb") as f:
                out[os.path.relpath(os.path.join(d, name), root)] = f.read()
    return out


@pytest.fixture(scope="module")
def corrupt_run(tmp_path_factory, tokenizer):
    """A run of a tiny model with checkpoints at steps 1 and 2, step 2's weights overwritten."""
    from smollm.checkpoint import TrainerState, rng_states, save_checkpoint

    torch.manual_seed(0)
    model = SmolLM(get_preset("tiny"))
    run = str(tmp_path_factory.mktemp("app") / "run")
    for step in (1, 2):
        state = TrainerState(step=step, tokens=step * 10, seed=1, world_size=1, micro_batch=4, grad_accum=2,
                             optimizer={}, scheduler={}, rng=rng_states(), last_loss=2.5, last_val_loss=None)
        save_checkpoint(run, model, state, "train:\n  max_steps: 2\n", tokenizer=tokenizer, keep_trainer_states=2)
    bad = os.path.join(run, "checkpoints", "step_000002", "model.safetensors")
    size = os.path.getsize(bad)
    with open(bad, "r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(1024))
    return run, bad


def test_app_compare_on_a_corrupt_checkpoint_is_one_line(corrupt_run):
    import gradio as gr

    from smollm.app import compare_run

    run, bad = corrupt_run
    before = _tree(run)
    with pytest.raises(gr.Error) as e:
        compare_run(run, PROMPT, 3, 0, 0, 1, 0)
    msg = one_line(e.value.message)
    assert msg.startswith(f"Could not compare the checkpoints of {run}: ") and bad in msg and "corrupt" in msg
    assert e.value.print_exception is False  # no traceback in the app's console
    assert _tree(run) == before


def test_app_generate_on_a_corrupt_checkpoint_is_one_line(corrupt_run):
    import gradio as gr

    from smollm.app import Models, stream_text

    run, bad = corrupt_run
    ckpt = os.path.dirname(bad)
    models = Models()
    with pytest.raises(gr.Error) as e:
        list(stream_text(models, ckpt, PROMPT, 3, 0, 0, 1, 1, 0))
    msg = one_line(e.value.message)
    assert msg.startswith(f"Could not load {ckpt}: ") and bad in msg and e.value.print_exception is False
    good = os.path.join(run, "checkpoints", "step_000001")
    assert list(stream_text(models, good, PROMPT, 3, 0, 0, 1, 1, 0))[-1].startswith(PROMPT)  # the good one works


def test_app_user_errors_print_no_traceback():
    import gradio as gr

    from smollm.app import Models, compare_run, stream_text

    for call in (lambda: list(stream_text(Models(), "x", "  ", 3, 0, 0, 1, 1, 0)),
                 lambda: compare_run("nope", "", 3, 0, 0, 1, 0)):
        with pytest.raises(gr.Error) as e:
            call()
        assert e.value.message == "Enter a prompt." and e.value.print_exception is False


def test_app_prompt_filling_the_context_is_a_message(small_ctx, n_prompt):
    import gradio as gr

    from smollm.app import Models, stream_text

    with pytest.raises(gr.Error) as e:
        list(stream_text(Models(), small_ctx, PROMPT + PROMPT, 3, 0, 0, 1, 1, 0))
    assert "longer than the model's context" in one_line(e.value.message) and e.value.print_exception is False


# ------------------------------------------------------------------ 5. a model that does not exist --

def _generate(cwd, *argv) -> subprocess.CompletedProcess:
    """generate.py as a user runs it, in cwd; the Hub asked offline (HF_HUB_OFFLINE: the same answer
    with or without a network, at once)."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "generate.py"), *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))


@pytest.mark.parametrize("model", ["runs/nope", "models/nope"])
def test_a_mistyped_model_path_is_said_to_be_missing(tmp_path, model):
    """A name that can only be a local path (runs/..., or below a directory that exists here) is said
    to be missing, naming it, and nothing about the Hub (it was never asked)."""
    (tmp_path / "models").mkdir()
    r = _generate(tmp_path, "--model", model, "--prompt", PROMPT)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr, r.stderr
    assert one_line(r.stderr) == f"generate.py: error: --model {model}: no such file or directory"


def test_a_missing_hub_shaped_model_says_the_local_path_first_then_the_hub(tmp_path):
    r = _generate(tmp_path, "--model", "nobody-here/nope", "--prompt", PROMPT)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr, r.stderr
    assert one_line(r.stderr).startswith("generate.py: error: --model nobody-here/nope: no such file or directory "
                                         "here; as a Hub id it failed: ")


def test_the_app_says_a_missing_model_path_is_missing(tmp_path):
    import gradio as gr

    from smollm.app import Models, stream_text

    with pytest.raises(gr.Error) as e:
        list(stream_text(Models(), "runs/nope", PROMPT, 3, 0, 0, 1, 1, 0))
    assert one_line(e.value.message) == "Model runs/nope: no such file or directory"
    assert e.value.print_exception is False


# ------------------------------------------------------------------- round 3: numbers that are not numbers --

@pytest.mark.parametrize("flag, name", [("--temperature", "temperature"), ("--top-p", "top_p"),
                                        ("--repetition-penalty", "repetition_penalty")])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_sampling_setting_that_is_not_finite_is_one_line(small_ctx, capsys, flag, name, value):
    # NaN passed every `< 0` check: greedy decoding printed garbage with exit 0, sampling died in multinomial.
    with pytest.raises(SystemExit) as e:
        G.main(["--model", small_ctx, "--prompt", PROMPT, "--max-new-tokens", "2", flag, value])
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert one_line(captured.err).endswith(f"{name} must be a finite number, got {value}")
    assert PROMPT not in captured.out  # refused before anything was generated


def test_the_app_refuses_a_sampling_setting_that_is_not_finite(small_ctx):
    import gradio as gr

    from smollm.app import Models, stream_text

    with pytest.raises(gr.Error) as e:
        list(stream_text(Models(), small_ctx, PROMPT, 3, float("nan"), 0, 1, 1, 0))
    assert "temperature must be a finite number, got nan" in e.value.message and e.value.print_exception is False
