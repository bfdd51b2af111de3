"""SIGKILL of train.py at five moments (before the first checkpoint, mid-step, mid-checkpoint, between a
checkpoint and its samples, mid-upload), then a start again as a user would (--resume when a
checkpoint exists, else the same command): the run ends as an uninterrupted one does. The same
losses, weights and samples, exactly one record per step in metrics.jsonl and per checkpoint in
samples.jsonl/md, nothing left over, and the remote copy whole."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import file_tree
from conftest import micro_run_overrides as _overrides

import smollm.cli.train as CT
from smollm.checkpoint import list_checkpoints
from smollm.files import read_jsonl
from smollm.runs import TMP_PREFIX, Run

# Where the child stops to be killed: it touches the marker, then sleeps until the SIGKILL.
KILLED = textwrap.dedent("""
    import json, sys, time
    import smollm.checkpoint as C
    import smollm.cli.train as CT
    import smollm.remote.store as RS
    import smollm.training.trainer as TR
    point, marker, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

    def hold():
        open(marker, "w").close()
        time.sleep(600)

    def after(obj, name, when):  # obj.name runs, then holds when when(*args) says so
        real = getattr(obj, name)
        def wrapped(*a, **k):
            out = real(*a, **k)
            if when(*a, **k):
                hold()
            return out
        setattr(obj, name, wrapped)

    def before(obj, name, when):
        real = getattr(obj, name)
        def wrapped(*a, **k):
            if when(*a, **k):
                hold()
            return real(*a, **k)
        setattr(obj, name, wrapped)

    if point == "before-first-checkpoint":
        after(TR.Trainer, "train_step", lambda self: self.step == 2)
    elif point == "mid-step":  # step 5's batch drawn, its update not applied
        before(TR, "optimizer_step", lambda *a, **k: a[5] == 5)
    elif point == "mid-checkpoint":  # step 6's weights written in the temporary directory, nothing else
        calls = []
        after(C, "write_hf_files", lambda *a, **k: calls.append(1) or len(calls) == 2)
    elif point == "between-checkpoint-and-samples":  # step 3's checkpoint renamed into place
        before(TR.Trainer, "write_samples", lambda self: self.step == 3)
    elif point == "mid-upload":  # one file of step 3 in the store
        after(RS.Store, "put", lambda self, local, rel: "step_000003/" in rel)
    sys.exit(CT.main(args))
""")

POINTS = ["before-first-checkpoint", "mid-step", "mid-checkpoint", "between-checkpoint-and-samples", "mid-upload"]
TIMING = ("tokens_per_s", "mfu", "peak_mem_mb", "seconds_per_step", "eta_s")  # differ between any two runs


def _untimed(records: list[dict]) -> list[dict]:
    """Records without their timings (an eval record's `seconds` too)."""
    out = []
    for r in records:
        r = {k: v for k, v in r.items() if k not in TIMING}
        if "eval" in r:
            r["eval"] = {k: v for k, v in r["eval"].items() if k != "seconds"}
        out.append(r)
    return out


def _records(run) -> list[dict]:
    return _untimed(read_jsonl(Run(str(run)).metrics))


def _weights(run) -> dict:
    return {s: open(os.path.join(d, "model.safetensors"), "rb").read() for s, d in list_checkpoints(str(run))}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, dataset, gguf_path):
    run = tmp_path_factory.mktemp("kill") / "whole"
    assert CT.main(_overrides(run, dataset, gguf_path)) == 0
    return run


@pytest.mark.parametrize("point", POINTS)
def test_a_sigkill_then_a_start_again_ends_as_an_uninterrupted_run(point, tmp_path, dataset, gguf_path, uninterrupted,
                                                                   capsys):
    run, store = tmp_path / "run", tmp_path / "store"
    args = _overrides(run, dataset, gguf_path, *([f"log.remote=file://{store}"] if point == "mid-upload" else []))
    marker = tmp_path / "reached"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", KILLED, point, str(marker), json.dumps(args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, f"{point}: the run ended before the kill: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, f"{point}: never reached"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()

    again = ["--resume", str(run)] if list_checkpoints(str(run)) else args
    assert CT.main(again) == 0, capsys.readouterr().err
    assert _records(run) == _records(uninterrupted)  # one record per step: none twice, none lost
    assert _untimed(read_jsonl(Run(str(run)).samples_jsonl)) == _untimed(read_jsonl(Run(str(uninterrupted)).samples_jsonl))
    assert _weights(run) == _weights(uninterrupted)
    samples_md = Run(str(run)).samples_md
    assert open(samples_md).read().split("\n", 1)[1] == open(Run(str(uninterrupted)).samples_md).read().split("\n", 1)[1]
    assert not [n for n in os.listdir(run / "checkpoints") if n.startswith(TMP_PREFIX)]
    if point == "mid-upload":
        there = file_tree(store / "checkpoints")
        for name in ("step_000003", "step_000006"):
            local = file_tree(run / "checkpoints" / name)
            assert {k: v for k, v in local.items() if k != "trainer_state.pt"} == \
                {k[len(name) + 1:]: v for k, v in there.items() if k.startswith(name + "/") and
                 not k.endswith("trainer_state.pt")}
        assert there["latest"] == b"step_000006\n"
