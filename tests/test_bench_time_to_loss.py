"""bench/time_to_loss.py: where a curve crosses the target, and a run of two recipes in turns."""

import json
import os

import pytest

from bench import time_to_loss as TTL
from conftest import micro_run_overrides

CURVE = [{"tokens": 0, "seconds": 0.0, "val_loss": 10.0},
         {"tokens": 100, "seconds": 2.0, "val_loss": 6.0},
         {"tokens": 200, "seconds": 5.0, "val_loss": 4.0}]


def test_crossing_is_linear_between_the_evaluations_around_the_target():
    assert TTL.crossing(CURVE, 5.0, "tokens") == pytest.approx(150)  # halfway from 6.0 to 4.0
    assert TTL.crossing(CURVE, 5.0, "seconds") == pytest.approx(3.5)
    assert TTL.crossing(CURVE, 6.0, "tokens") == pytest.approx(100)  # reached exactly at an evaluation
    assert TTL.crossing(CURVE, 3.9, "tokens") is None  # never reached
    assert TTL.crossing(CURVE, 11.0, "tokens") == 0  # already below at the start


def test_a_recipe_needs_a_name():
    assert TTL.parse_recipe("fast=optim.kind=muon optim.lr=1e-2") == ("fast", ["optim.kind=muon", "optim.lr=1e-2"])
    with pytest.raises(SystemExit, match="NAME=key=value"):
        TTL.parse_recipe("optim.kind")


def test_the_same_recipe_twice_gives_the_same_curve(tmp_path, dataset, gguf_path):
    """Two recipes trained in turns in one process do not touch each other's state: the same recipe
    under two names gives the same validation losses, so the copy reaches the target at 100%."""
    out = str(tmp_path / "out")
    common = [a for o in micro_run_overrides(tmp_path / "run", dataset, gguf_path) for a in ("--set", o)]
    rc = TTL.main(["--recipe", "a=optim.kind=muon", "--recipe", "b=optim.kind=muon", "--steps", "4", "--every", "2",
                   *common, "--out", out])
    assert rc == 0
    rows = [json.loads(line) for line in open(os.path.join(out, "time_to_loss_cpu.jsonl"))]
    a, b = (r["metrics"]["curve"] for r in rows[:2])
    assert [c["val_loss"] for c in a] == [c["val_loss"] for c in b] and len(a) == 3  # steps 0, 2, 4
    assert a[-1]["val_loss"] < a[0]["val_loss"]
    assert rows[1]["metrics"]["token_fraction"] == 1.0
    assert os.path.getsize(os.path.join(out, "time_to_loss_cpu.png")) > 0
    assert "b: reaches the baseline's final val loss" in open(os.path.join(out, "time_to_loss_cpu.md")).read()
