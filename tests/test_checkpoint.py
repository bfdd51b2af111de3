import os

import pytest
import torch

from smollm.checkpoint import (TRAINER_STATE, latest_checkpoint, list_checkpoints, load_checkpoint,
                               resolve_resumable, rng_states, save_checkpoint, set_rng_states)
from smollm.config import get_preset
from smollm.model import SmolLM


@pytest.fixture
def model():
    torch.manual_seed(0)
    return SmolLM(get_preset("tiny"))


def _save(run, model, step, keep=2):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = {"optimizer": opt.state_dict(), "step": step, "tokens": step * 10, "rng": rng_states()}
    return save_checkpoint(str(run), model, state, "train:\n  max_steps: 9\n", keep_trainer_states=keep)


def test_round_trip_latest_and_pruning(tmp_path, model):
    run = tmp_path / "run"
    for step in (1, 2, 3):
        _save(run, model, step)
    assert [s for s, _ in list_checkpoints(str(run))] == [1, 2, 3]
    assert latest_checkpoint(str(run)).endswith("step_000003")
    assert resolve_resumable(str(run)).endswith("step_000003")
    # Optimizer states of the newest two are kept; weights of all.
    have_state = [os.path.exists(os.path.join(d, TRAINER_STATE)) for _, d in list_checkpoints(str(run))]
    assert have_state == [False, True, True]
    state, trainer_state, yaml_text = load_checkpoint(latest_checkpoint(str(run)))
    assert trainer_state["step"] == 3 and "max_steps: 9" in yaml_text
    for k, v in model.state_dict().items():
        if k != "lm_head.weight":
            assert torch.equal(state[k], v), k
    with pytest.raises(FileNotFoundError, match="weights only"):
        resolve_resumable(list_checkpoints(str(run))[0][1])
    assert not [n for n in os.listdir(run / "checkpoints") if n.startswith(".")]  # no temporary leftovers


def test_checkpoint_loads_in_transformers(tmp_path, model):
    from transformers import AutoModelForCausalLM

    path = _save(tmp_path / "run", model, 5)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.randint(0, 49152, (2, 17))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() < 1e-4


def test_failed_write_leaves_the_previous_checkpoint(tmp_path, model, monkeypatch):
    run = tmp_path / "run"
    _save(run, model, 1)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        _save(run, model, 2)
    assert [s for s, _ in list_checkpoints(str(run))] == [1] and latest_checkpoint(str(run)).endswith("step_000001")
    assert not [n for n in os.listdir(run / "checkpoints") if n.startswith(".")]


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
