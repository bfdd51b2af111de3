import json
import os

import pytest
import torch

import smollm.checkpoint as C
from conftest import file_tree, save_step, trainer_state
from smollm.checkpoint import (TRAINER_STATE, TrainerState, latest_checkpoint, list_checkpoints, load_checkpoint,
                               resolve_resumable, rng_states, set_rng_states)


def test_round_trip_latest_and_pruning(tmp_path, model, tokenizer):
    run = tmp_path / "run"
    want = trainer_state(model, 3)
    for step in (1, 2, 3):
        save_step(run, model, tokenizer, step, want if step == 3 else None)
    assert [s for s, _ in list_checkpoints(str(run))] == [1, 2, 3]
    assert latest_checkpoint(str(run)).endswith("step_000003")
    assert resolve_resumable(str(run)).endswith("step_000003")
    # Optimizer states of the newest two are kept; weights of all.
    have_state = [os.path.exists(os.path.join(d, TRAINER_STATE)) for _, d in list_checkpoints(str(run))]
    assert have_state == [False, True, True]
    state, got, yaml_text = load_checkpoint(latest_checkpoint(str(run)))
    for name in ("step", "tokens", "seed", "world_size", "micro_batch", "grad_accum", "last_loss", "last_val_loss",
                 "scheduler"):
        assert getattr(got, name) == getattr(want, name), name
    assert got.optimizer["param_groups"] == want.optimizer["param_groups"]
    assert torch.equal(got.rng["torch"], want.rng["torch"])
    assert "max_steps: 9" in yaml_text
    for k, v in model.state_dict().items():
        if k != "lm_head.weight":
            assert torch.equal(state[k], v), k
    with pytest.raises(FileNotFoundError, match="weights only"):
        resolve_resumable(list_checkpoints(str(run))[0][1])
    assert not [n for n in os.listdir(run / "checkpoints") if n.startswith(".")]  # no temporary leftovers


def test_trainer_state_keeps_the_keys_existing_checkpoints_have(tmp_path, model):
    """trainer_state.pt's keys are a file format: every checkpoint on disk holds exactly these, and
    must resume."""
    d = trainer_state(model, 7).to_dict()
    assert set(d) == {"optimizer", "scheduler", "step", "tokens", "data", "rng", "last_loss", "last_val_loss",
                      "world_size", "micro_batch", "grad_accum"}
    assert d["data"] == {"seed": 1337, "next_step": 7, "identity": None}  # identity: the dataset's (round 3)
    del d["last_loss"], d["last_val_loss"], d["data"]["identity"]  # optional on disk: read with .get
    state = TrainerState.from_dict(d)
    assert (state.step, state.seed, state.global_batch, state.last_loss, state.data_identity) == (7, 1337, 8, None,
                                                                                                 None)


def test_checkpoint_loads_in_transformers(tmp_path, model, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = save_step(tmp_path / "run", model, tokenizer, 5)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.randint(0, 49152, (2, 17))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() < 1e-4
    assert AutoTokenizer.from_pretrained(path)("def f():")["input_ids"] == tokenizer("def f():")["input_ids"]


@pytest.mark.parametrize("failing", ["tokenizer files", "trainer state"])
def test_a_failed_write_leaves_the_checkpoints_and_latest_as_they_were(tmp_path, model, tokenizer, monkeypatch,
                                                                       failing):
    """A checkpoint whose writing fails halfway (a full disk), whether of a new step or of a step a
    resumed run writes again, changes nothing on disk: not the earlier checkpoints, not `latest`,
    and leaves no temporary directory."""
    run = tmp_path / "run"
    save_step(run, model, tokenizer, 1)
    save_step(run, model, tokenizer, 2)
    before = file_tree(run / "checkpoints", relative_to=run)
    assert (run / "checkpoints" / "latest").read_text() == "step_000002\n"
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)  # other weights: a partial write would show in the bytes

    def disk_full(*a, **k):
        raise OSError("disk full")

    if failing == "tokenizer files":  # model.safetensors is written, then the tokenizer's files fail
        real = C.write_hf_files

        def weights_then_disk_full(model, directory, tokenizer, weights=True):
            real(model, directory, None)
            assert os.path.exists(os.path.join(directory, "model.safetensors"))
            disk_full()

        monkeypatch.setattr(C, "write_hf_files", weights_then_disk_full)
    else:
        monkeypatch.setattr(torch, "save", disk_full)
    for step in (3, 2):
        with pytest.raises(OSError, match="disk full"):
            save_step(run, model, tokenizer, step)
        assert file_tree(run / "checkpoints", relative_to=run) == before, step
    # The test can fail: the same write, not failing, does change the files.
    monkeypatch.undo()
    save_step(run, model, tokenizer, 2)
    assert file_tree(run / "checkpoints", relative_to=run) != before


def test_unreadable_trainer_state_is_a_clear_error(tmp_path, model, tokenizer):
    path = save_step(tmp_path / "run", model, tokenizer, 1)
    torch.save({"step": 1}, os.path.join(path, TRAINER_STATE))
    with pytest.raises(ValueError, match=r"trainer_state\.pt: corrupt"):  # its recorded sha256 differs
        load_checkpoint(path)
    info_path = os.path.join(path, "checkpoint.json")  # a checkpoint from before checksums were recorded
    with open(info_path) as f:
        info = json.load(f)
    del info["sha256"]
    with open(info_path, "w") as f:
        json.dump(info, f)
    with pytest.raises(ValueError, match=r"trainer_state\.pt: not a trainer state"):
        load_checkpoint(path)


def test_missing_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint or run directory"):
        resolve_resumable(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no checkpoints"):
        resolve_resumable(str(tmp_path / "empty"))


def test_rng_states_round_trip():
    state = rng_states()
    a = torch.rand(3)
    set_rng_states(state)
    assert torch.equal(torch.rand(3), a)
