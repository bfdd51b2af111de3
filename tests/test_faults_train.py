"""Faults a user meets around train.py: copied runs, two runs in one directory, overrides on resume,
Ctrl-C, torn JSON lines, leftovers of a kill mid-checkpoint, errors that must be one line, and a
micro-batch that does not fit in memory."""

import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import micro_run_overrides as _overrides
from conftest import file_tree, one_line

import smollm.cli.train as CT
import smollm.training.dataset as DS
import smollm.training.device as DV
import smollm.training.evaluation as EV
import smollm.training.loop as L
import smollm.training.optimizer as O
import smollm.training.step as S
import smollm.training.trainer as TR
from smollm.checkpoint import TRAINER_STATE, latest_checkpoint, list_checkpoints
from smollm.files import read_jsonl
from smollm.metrics import MetricsLog
from smollm.runs import LOCK, RunLocked, acquire_lock, release_lock
from smollm.schedule import lr_factor
from smollm.train_config import ConfigError, RunConfig, apply_overrides, load_config


def _cfg(run_dir, dataset, gguf_path, *extra) -> RunConfig:
    return apply_overrides(RunConfig(), _overrides(run_dir, dataset, gguf_path, *extra)).validate()


def _short(run_dir, dataset, gguf_path, *extra):
    """A 2-step run with a checkpoint at step 2."""
    return L.train(_cfg(run_dir, dataset, gguf_path, "train.max_steps=2", "log.ckpt_every=2", "log.eval_every=2",
                        *extra))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------- 1. resuming a copy of a run --

def test_resuming_a_copy_writes_into_the_copy(tmp_path, dataset, gguf_path):
    _short(tmp_path / "a", dataset, gguf_path)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    before = file_tree(tmp_path / "a")
    assert CT.main(["--resume", str(tmp_path / "b"), "train.max_steps=4", "log.ckpt_every=4"]) == 0
    assert file_tree(tmp_path / "a") == before  # latest, trainer states, metrics.jsonl: untouched
    assert latest_checkpoint(str(tmp_path / "b")).endswith("step_000004")
    assert [m["step"] for m in read_jsonl(str(tmp_path / "b" / "metrics.jsonl")) if "loss" in m] == [1, 2, 3, 4]
    # log.out_dir=... given explicitly still wins
    assert CT.main(["--resume", str(tmp_path / "b"), "train.max_steps=6", "log.ckpt_every=6",
                   f"log.out_dir={tmp_path / 'c'}"]) == 0
    assert latest_checkpoint(str(tmp_path / "c")).endswith("step_000006")
    assert latest_checkpoint(str(tmp_path / "b")).endswith("step_000004")


# ---------------------------------------------------------------- 2. two runs in one directory --

def test_a_live_lock_refuses_a_second_run(tmp_path, dataset, gguf_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / LOCK).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                            "started": "2026-01-01T00:00:00"}))
        with pytest.raises(RunLocked, match=f"pid {holder.pid} on this host"):
            _short(run, dataset, gguf_path)
        assert CT.main(_overrides(run, dataset, gguf_path, "train.max_steps=2")) == 2
        err = _one_line_error(capsys)
        assert f"pid {holder.pid}" in err and str(run) in err and "log.out_dir" in err
        assert json.loads((run / LOCK).read_text())["pid"] == holder.pid  # the holder's lock stays
        assert os.listdir(run) == [LOCK]  # nothing written
    finally:
        holder.kill()
        holder.wait()


def test_a_resume_of_a_live_run_says_in_use_before_reading_its_checkpoints(tmp_path, dataset, gguf_path, capsys):
    """The first run is mid-checkpoint (its newest trainer state half written): a second --resume,
    through a symlink or with no value, is "in use by pid N", not a corrupt checkpoint."""
    run = tmp_path / "run"
    _short(run, dataset, gguf_path)
    (tmp_path / "link").symlink_to(run)
    state = run / "checkpoints" / "step_000002" / TRAINER_STATE
    state.write_bytes(state.read_bytes()[:100])
    capsys.readouterr()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / LOCK).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": "then"}))
        before = file_tree(run)
        for argv in (["--resume", str(tmp_path / "link")], ["--resume", str(state.parent)],
                     [*_overrides(tmp_path / "link", dataset, gguf_path), "--resume"]):
            assert CT.main(argv) == 2
            err = _one_line_error(capsys)
            assert f"is in use by another run (pid {holder.pid} on this host, started then" in err, err
        assert file_tree(run) == before
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_and_the_lock_is_released(tmp_path, dataset, gguf_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "x"}))
    seen = {}
    real = S.optimizer_step

    def step(*a, **k):
        seen.setdefault("lock", json.loads((run / LOCK).read_text()))
        return real(*a, **k)

    monkeypatch.setattr(TR, "optimizer_step", step)
    _short(run, dataset, gguf_path)
    err = capsys.readouterr().err
    assert f"taking over the stale lock {run / LOCK}" in err and f"pid {dead.pid}" in err
    assert seen["lock"]["pid"] == os.getpid()  # held while training
    assert not (run / LOCK).exists()  # released at the end
    assert latest_checkpoint(str(run)).endswith("step_000002")


def test_lock_functions(tmp_path):
    acquire_lock(str(tmp_path))
    with pytest.raises(RunLocked, match="in use by another run"):
        acquire_lock(str(tmp_path))  # this very process is alive
    release_lock(str(tmp_path))
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- 3. optimizer overrides on resume --

def test_optimizer_overrides_apply_on_resume(tmp_path, dataset, gguf_path, monkeypatch, capsys):
    run = tmp_path / "run"
    _short(run, dataset, gguf_path, "train.max_steps=4")  # checkpoints at steps 2 and 4
    capsys.readouterr()
    lrs = {}
    real = S.optimizer_step

    def recording(fwd, model, opt, micro, guard, step, *a, **k):
        lrs[step] = [g["lr"] for g in opt.param_groups] + [opt.param_groups[0]["weight_decay"]]
        return real(fwd, model, opt, micro, guard, step, *a, **k)

    monkeypatch.setattr(TR, "optimizer_step", recording)
    assert CT.main(["--resume", str(run / "checkpoints" / "step_000002"), "train.max_steps=6", "log.ckpt_every=6",
                   "optim.lr=5e-4", "optim.weight_decay=0.2", "log.out_dir=" + str(tmp_path / "more")]) == 0
    out = capsys.readouterr().out
    assert "optim.lr 0.001 -> 0.0005" in out and "optim.weight_decay 0.01 -> 0.2" in out, out
    cfg = _cfg(run, dataset, gguf_path, "train.max_steps=6")
    assert sorted(lrs) == [3, 4, 5, 6]
    for s, (lr0, lr1, wd) in lrs.items():
        want = 5e-4 * lr_factor(s - 1, 6, cfg.schedule)
        assert abs(lr0 - want) <= 1e-12 and abs(lr1 - want) <= 1e-12 and wd == 0.2, (s, lr0, want)
    saved = yaml.safe_load((tmp_path / "more" / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 5e-4
    ckpt_cfg = yaml.safe_load((tmp_path / "more" / "checkpoints" / "step_000006" / "run_config.yaml").read_text())
    assert ckpt_cfg["optim"]["lr"] == 5e-4
    state = torch.load(tmp_path / "more" / "checkpoints" / "step_000006" / TRAINER_STATE, weights_only=True)
    assert state["scheduler"]["base_lrs"] == [5e-4, 5e-4]


def test_shape_changes_are_refused_on_resume(tmp_path, dataset, gguf_path, capsys):
    run = tmp_path / "run"
    _short(run, dataset, gguf_path)
    before = file_tree(run)
    capsys.readouterr()
    assert CT.main(["--resume", str(run), "data.seq_len=16"]) == 2
    err = _one_line_error(capsys)
    assert "data.seq_len" in err and "32" in err and "16" in err
    assert CT.main(["--resume", str(run), "model.overrides.hidden_size=128"]) == 2
    err = _one_line_error(capsys)
    assert "hidden_size=64" in err and "128" in err
    assert file_tree(run) == before


# ---------------------------------------------------------------- 4. Ctrl-C --

def _sigint_during_step(monkeypatch, step: int, times: int):
    real = S.optimizer_step

    def step_then_signal(*args, **kw):
        out = real(*args, **kw)
        if inspect.signature(real).bind(*args, **kw).arguments["step"] == step:
            for _ in range(times):
                signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(TR, "optimizer_step", step_then_signal)


def test_first_ctrl_c_stops_after_the_step(tmp_path, dataset, gguf_path, monkeypatch, capsys):
    _sigint_during_step(monkeypatch, 2, 1)
    summary = L.train(_cfg(tmp_path / "run", dataset, gguf_path))
    err = capsys.readouterr().err
    assert "stopping after this step (Ctrl-C again to abort without a checkpoint)" in err
    assert summary["stopped"] == "SIGINT" and summary["step"] == 2
    assert latest_checkpoint(str(tmp_path / "run")).endswith("step_000002")
    assert not (tmp_path / "run" / LOCK).exists()


def test_second_ctrl_c_aborts_without_a_checkpoint(tmp_path, dataset, gguf_path, monkeypatch, capsys):
    handler = signal.getsignal(signal.SIGINT)
    _sigint_during_step(monkeypatch, 4, 2)
    assert CT.main(_overrides(tmp_path / "run", dataset, gguf_path)) == 130
    err = capsys.readouterr().err
    assert "stopping after this step" in err and "aborted by Ctrl-C" in err and "step_000003" in err
    assert [s for s, _ in list_checkpoints(str(tmp_path / "run"))] == [3]
    assert not (tmp_path / "run" / LOCK).exists()
    assert signal.getsignal(signal.SIGINT) == handler


# ---------------------------------------------------------------- 5. torn JSON lines --

def test_read_jsonl_drops_a_torn_last_line_only(tmp_path, capsys):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert read_jsonl(str(path)) == [{"step": 1}, {"step": 2}]
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err and "torn last line" in err and "line 3" in err
    path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match=f"{path}: line 2 is not JSON"):
        read_jsonl(str(path))


def test_metrics_truncate_after_tolerates_a_torn_last_line(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 2.25}\n{"step": 3, "lo')
    MetricsLog(str(tmp_path), tensorboard=False).truncate_after(5)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 2.25}\n'


def test_resume_after_a_torn_metrics_and_samples_line(tmp_path, dataset, gguf_path, capsys):
    run = tmp_path / "run"
    _short(run, dataset, gguf_path)
    metrics, samples = run / "metrics.jsonl", run / "samples.jsonl"
    good_metrics = metrics.read_bytes()
    good_samples = read_jsonl(str(samples))
    with open(metrics, "a") as f:
        f.write('{"step": 3, "tokens": 7')
    with open(samples, "a") as f:
        f.write('{"step": 3, "tok')
    assert CT.main(["--resume", str(run), "train.max_steps=4", "log.ckpt_every=4"]) == 0
    err = capsys.readouterr().err
    assert f"{metrics}: dropped a torn last line" in err and f"{samples}: dropped a torn last line" in err
    assert metrics.read_bytes().startswith(good_metrics)  # nothing before the torn line was lost
    assert [m["step"] for m in read_jsonl(str(metrics)) if "loss" in m] == [1, 2, 3, 4]
    assert [s["step"] for s in read_jsonl(str(samples))] == [2, 4] and read_jsonl(str(samples))[0] == good_samples[0]


# ---------------------------------------------------------------- 6. leftovers of a kill mid-checkpoint --

def test_checkpoint_temporaries_are_removed_at_the_next_start(tmp_path, dataset, gguf_path, capsys):
    run = tmp_path / "run"
    _short(run, dataset, gguf_path)
    ckpts = run / "checkpoints"
    (ckpts / ".tmp-step_000004-abc").mkdir()
    (ckpts / ".tmp-step_000004-abc" / "model.safetensors").write_bytes(b"half")
    (ckpts / ".tmp-xyz").write_bytes(b"half")
    (run / ".tmp-keep").write_bytes(b"not in checkpoints/")
    keep = sorted(os.listdir(ckpts / "step_000002"))
    assert CT.main(["--resume", str(run), "train.max_steps=3", "log.ckpt_every=3"]) == 0
    out = capsys.readouterr().out
    assert "removed 2 unfinished checkpoint temporaries" in out and ".tmp-xyz" in out
    assert sorted(os.listdir(ckpts)) == ["latest", "step_000002", "step_000003"]
    assert sorted(os.listdir(ckpts / "step_000002")) == keep
    assert (run / ".tmp-keep").exists()


# ---------------------------------------------------------------- 7. one-line errors, exit 2 --

def test_user_errors_are_one_line_with_exit_2(tmp_path, dataset, gguf_path, capsys):
    run = tmp_path / "run"
    _short(run, dataset, gguf_path)
    capsys.readouterr()
    state = run / "checkpoints" / "step_000002" / TRAINER_STATE

    assert CT.main(_overrides(tmp_path / "new" / "deep", dataset, gguf_path, "model.preset=nope")) == 2
    err = _one_line_error(capsys)
    assert "model.preset" in err and "'nope'" in err
    assert CT.main(_overrides(tmp_path / "new" / "deep", dataset, gguf_path, "optim.lr=-1")) == 2
    assert "optim.lr: must be positive, got -1" in _one_line_error(capsys)
    assert CT.main(_overrides(tmp_path / "new" / "deep", dataset, gguf_path, "optim.eps=-1")) == 2
    assert "optim.eps: must be positive, got -1" in _one_line_error(capsys)
    assert CT.main(_overrides(tmp_path / "new" / "deep", dataset, gguf_path, "optim.weight_decay=-1")) == 2
    assert "optim.weight_decay: must be >= 0, got -1" in _one_line_error(capsys)
    assert CT.main(["--resume", f"data.path={dataset}"]) == 2
    err = _one_line_error(capsys)
    assert "--resume takes a run directory or checkpoint" in err and "put overrides after it" in err
    assert CT.main(["--resume", str(tmp_path / "missing")]) == 2
    assert str(tmp_path / "missing") in _one_line_error(capsys)
    # A mistyped tokenizer path is a missing path, named by its key, not a Hub connection error.
    assert CT.main(_overrides(tmp_path / "new" / "deep", dataset, gguf_path, "data.tokenizer=runs/nope")) == 2
    assert _one_line_error(capsys) == "error: data.tokenizer runs/nope: no such file or directory"

    good = state.read_bytes()
    state.write_bytes(good[:100])  # torn
    assert CT.main(["--resume", str(run)]) == 2
    err = _one_line_error(capsys)
    assert TRAINER_STATE in err and str(run) in err  # names the damaged file (checkpoint.py's wording)
    state.write_bytes(good)
    # Unreadable weights (a directory where the file was: chmod 0 does not stop root, who runs CI).
    weights = run / "checkpoints" / "step_000002" / "model.safetensors"
    saved = weights.read_bytes()
    weights.unlink()
    weights.mkdir()
    assert CT.main(["--resume", str(run)]) == 2
    err = _one_line_error(capsys)
    assert str(weights) in err and "unreadable" in err
    weights.rmdir()
    weights.write_bytes(saved)
    # A failed start into a new directory leaves no directory behind (the lock included).
    # (the model's vocabulary is smaller than the dataset's: refused after the directory was made and locked)
    assert CT.main(_overrides(tmp_path / "new" / "deep", dataset, gguf_path, "model.overrides.vocab_size=1000")) == 2
    assert "vocab_size is 1000" in _one_line_error(capsys)
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------- 8. a micro-batch that does not fit in memory --

class _Windows:
    n_windows = 1000

    def get_batch(self, seed, step, batch_size):
        from smollm.data import Batch

        x = torch.zeros(2, 8, dtype=torch.long)
        return Batch(x, x)


@pytest.mark.parametrize("raised", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 300.00 GiB"),
                                    RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 GB"),
                                    MemoryError()])
def test_an_eval_batch_that_does_not_fit_in_memory_is_one_line(raised):
    def model(x, y):
        raise raised

    cfg = apply_overrides(RunConfig(), ["train.micro_batch=100000", "data.seq_len=2048"])
    with pytest.raises(ConfigError) as e:
        EV.validation_loss(model, _Windows(), cfg, torch.device("cpu"))
    assert one_line(str(e.value)) == ("train.micro_batch=100000 x data.seq_len=2048 does not fit in memory on cpu "
                                       "(an allocation failed); lower train.micro_batch (and raise train.grad_accum), or "
                                       "parallel.checkpoint_activations=true, or parallel.strategy=fsdp over several GPUs")


def test_other_eval_errors_pass_through_unchanged():
    def model(x, y):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        EV.validation_loss(model, _Windows(), RunConfig(), torch.device("cpu"))


def test_a_step_that_cannot_fit_fails_before_anything(tmp_path, dataset, gguf_path, capsys):
    """The issue's case: train.micro_batch=100000 spent minutes in the first evaluation, then was
    killed allocating hundreds of GB. Now: refused at once, nothing made."""
    run = tmp_path / "new" / "run"
    assert CT.main(_overrides(run, dataset, gguf_path, "train.micro_batch=100000")) == 2
    err = _one_line_error(capsys)
    assert err.startswith("error: train.micro_batch=100000 x data.seq_len=32 does not fit in memory on cpu (a step "
                          "needs an estimated ") and "; the device has " in err
    for part in ("weights", "gradients", "optimizer", "activations", "loss"):  # the sizes, by what holds them
        assert f" {part} " in err, part
    assert err.endswith("lower train.micro_batch (and raise train.grad_accum), or parallel.checkpoint_activations=true, "
                        "or parallel.strategy=fsdp over several GPUs")
    assert not (tmp_path / "new").exists()


def test_an_allocation_failing_in_a_training_step_is_one_line(tmp_path, dataset, gguf_path, monkeypatch, capsys):
    real = S.optimizer_step

    def oom_at_step_2(*args, **kw):
        if args[5] == 2:  # the step number
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 30.00 GiB")
        return real(*args, **kw)

    monkeypatch.setattr(TR, "optimizer_step", oom_at_step_2)
    assert CT.main(_overrides(tmp_path / "run", dataset, gguf_path)) == 2
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()  # (the progress bar before it)
    assert "Traceback" not in "\n".join(err) and err[-1] == ("error: train.micro_batch=4 x data.seq_len=32 does not fit in memory on cpu "
                                       "(an allocation failed); lower train.micro_batch (and raise train.grad_accum), or "
                                                             "parallel.checkpoint_activations=true, or parallel.strategy=fsdp "
                                                             "over several GPUs")
    assert not (tmp_path / "run" / LOCK).exists()


def test_the_a10g_run_fits_an_a10g_by_the_estimate():
    """The estimate must not refuse the configs this project ships for their GPU (24 GB A10G), and must
    refuse the same batch on the torch path, whose full logits do not fit."""
    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "smollm2-135m.yaml"))
    need = DV.memory_estimate(cfg, torch.device("cuda"))
    assert 16 * cfg.model_config().n_params < need.total < 24e9
    assert DV.memory_estimate(apply_overrides(cfg, ["model.kernels=torch"]), torch.device("cuda")).total > 24e9


# ---------------------------------------------------------------- 9. a finished dataset, other values --

def test_a_finished_dataset_made_with_other_values_is_said(dataset, gguf_path, tmp_path, capsys):
    """data.source/tokens/val_fraction only describe how to prepare a missing dataset: a finished one
    is used as it is, and a note names each value that differs (not silently, as before)."""
    meta = DS.ensure_dataset(_cfg(tmp_path, dataset, gguf_path, "data.tokens=1M"))
    note = one_line(capsys.readouterr().out)
    assert note == (f"data: using the finished dataset at {dataset}, made with data.tokens=80000 (this run: "
                    f"1000000), data.val_fraction=0.25 (this run: 0.01); to prepare one with this run's values, "
                    f"point data.path at a new directory")
    assert meta["complete"] and meta["max_tokens"] == 80_000  # used, not rebuilt
    DS.ensure_dataset(_cfg(tmp_path, dataset, gguf_path, "data.tokens=80k", "data.val_fraction=0.25"))
    assert capsys.readouterr().out == ""
    DS.ensure_dataset(_cfg(tmp_path, dataset, gguf_path, "data.tokens=80k", "data.val_fraction=0.25",
                          "data.source=[other]"))
    assert "data.source=['stdlib'] (this run: ['other'])" in one_line(capsys.readouterr().out)


def test_a_bad_newest_checkpoint_is_said_once_and_its_replacement_noted(tmp_path, dataset, gguf_path, capsys):
    run = tmp_path / "run"
    _short(run, dataset, gguf_path, "log.ckpt_every=1")
    newest = run / "checkpoints" / "step_000002" / TRAINER_STATE
    newest.write_bytes(newest.read_bytes()[:100])
    capsys.readouterr()
    assert CT.main(["--resume", str(run)]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(newest) in warnings[0] and "step_000001 instead" in warnings[0]
    assert f"note: replacing {run / 'checkpoints' / 'step_000002'}" in captured.out
    assert [s for s, _ in list_checkpoints(str(run))] == [1, 2] and latest_checkpoint(str(run)).endswith("2")


# ---------------------------------------------------------------- round 3: train.py plot --

def test_plot_faults_are_one_line_and_write_nothing(tmp_path, capsys):
    def plot(*argv) -> str:
        assert CT.main(["plot", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("train.py plot: error: ") and "\n" not in err and "Traceback" not in err, err
        return err

    missing = tmp_path / "missing"
    assert plot(str(missing)).endswith(f"{missing}: no such run directory")
    run = tmp_path / "run"
    run.mkdir()
    assert "no metrics.jsonl to plot" in plot(str(run))
    good = {"step": 1, "tokens": 128, "loss": 9.5}
    (run / "metrics.jsonl").write_text(json.dumps(good) + "\nnot json\n" + json.dumps(good) + "\n")
    assert plot(str(run)).endswith(f"{run / 'metrics.jsonl'}: line 2 is not JSON (Expecting value: line 1 column 1 "
                                   f"(char 0)); fix or remove that line")
    (run / "metrics.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({"step": 2, "loss": 9.0}) + "\n")
    assert "metrics.jsonl: record 2 has no number of tokens" in plot(str(run))
    (run / "metrics.jsonl").write_text(json.dumps(good) + "\n")
    out = tmp_path / "nodir" / "loss.png"
    assert plot(str(run), "--out", str(out)).endswith(f"--out {out}: the directory {out.parent} does not exist")
    assert sorted(os.listdir(run)) == ["metrics.jsonl"] and not out.parent.exists()
    assert CT.main(["plot", str(run), "--out", str(tmp_path / "loss.png")]) == 0  # the same run, a good --out
    assert (tmp_path / "loss.png").stat().st_size > 0


# ---------------------------------------------------------------- round 3: data that changed under a run --

def _copy_dataset(dataset, dest):
    shutil.copytree(dataset, dest)
    return str(dest)


def _replace_shard(directory, name, tokens):
    """A shard rewritten with other tokens and meta.json updated to match: the corpus prepared again."""
    import numpy as np

    from smollm.data import read_meta, write_shard
    from smollm.files import atomic_write_json

    meta = read_meta(directory)
    entry = next(e for e in meta["shards"] if e["file"] == name)
    entry.update(write_shard(os.path.join(directory, name), np.asarray(tokens), meta["vocab_size"], meta["eos_id"]))
    atomic_write_json(os.path.join(directory, "meta.json"), meta)


def test_a_shard_changed_in_place_is_found_at_open_and_by_verify(tmp_path, dataset, gguf_path, capsys):
    from smollm.cli.prepare import main as prepare_main

    data = _copy_dataset(dataset, tmp_path / "data")
    shard = os.path.join(data, "train_000000.bin")
    assert prepare_main(["--verify", data]) == 0
    assert capsys.readouterr().out.strip().endswith("shards match their checksums")
    size = os.path.getsize(shard)
    with open(shard, "r+b") as f:  # bytes between the sampled blocks: only a full check sees them
        f.seek(size // 2 + 5000)
        f.write(b"\x07\x00" * 8)
    assert prepare_main(["--verify", data]) == 2
    assert one_line(capsys.readouterr().err) == (f"prepare: error: {shard}: changed since it was prepared (its bytes "
                                                 f"differ from the checksum in meta.json); prepare the dataset again "
                                                 f"into a new directory")
    with open(shard, "r+b") as f:  # the first block: what every open reads
        f.seek(1024)
        f.write(b"\x07\x00" * 8)
    assert CT.main(_overrides(tmp_path / "run", data, gguf_path)) == 2
    assert _one_line_error(capsys) == (f"error: {shard}: changed since it was prepared (its bytes differ from the "
                                       f"checksum in meta.json); prepare the dataset again into a new directory")
    assert not list_checkpoints(str(tmp_path / "run"))


def test_a_resume_onto_other_data_or_another_seed_says_so(tmp_path, dataset, gguf_path, capsys):
    from smollm.data import open_shard

    data = _copy_dataset(dataset, tmp_path / "data")
    run = tmp_path / "run"
    assert CT.main(_overrides(run, data, gguf_path, "train.max_steps=3")) == 0
    capsys.readouterr()
    assert CT.main(["--resume", str(run), "train.max_steps=4", "log.ckpt_every=4", "train.seed=7"]) == 0
    out = capsys.readouterr().out
    assert "warning: train.seed=7 differs from the checkpoint's 1337: the data order changes from here on (resume " \
           "with train.seed=1337 to keep it)" in out, out
    val = os.path.join(data, "val_000000.bin")
    _replace_shard(data, "val_000000.bin", open_shard(val)[::-1].copy())
    assert CT.main(["--resume", str(run), "train.max_steps=5", "log.ckpt_every=5", "train.seed=7"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("warning: data.path")]
    assert len(line) == 1 and line[0].startswith(f"warning: data.path {data} is not the data this run trained on "
                                                 f"(1 shard changed; dataset ")
    assert line[0].endswith(": the validation split changed, so val loss from here on does not compare with before; "
                            "training goes on with it")
