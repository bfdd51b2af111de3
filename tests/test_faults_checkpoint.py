"""Faults of checkpoints and of the files they are written with, each made on purpose: a corrupt or
truncated checkpoint file, NaN weights, an export over its own run, files not world-readable, a full
or read-only disk. Each must give one line naming the file and lose nothing."""

import errno
import json
import os

import pytest
import torch

import smollm.cli.train as CT
from conftest import file_tree, one_line, save_step
import smollm.weights as W
from smollm import files
from smollm.checkpoint import TRAINER_STATE, CheckpointError, load_checkpoint, resolve_resumable
from smollm.config import get_preset
from smollm.export import UnsafeOutputError, export_run
from smollm.sources import load
from smollm.files import WriteError, atomic_dir, atomic_write_bytes, atomic_write_json
from smollm.model import SmolLM


@pytest.fixture
def run2(tmp_path, model, tokenizer):
    """A run with two resumable checkpoints, steps 1 and 2."""
    run = tmp_path / "run"
    save_step(run, model, tokenizer, 1)
    save_step(run, model, tokenizer, 2)
    return run


def _overwrite_middle(path, n=1024):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2 - n // 2)
        f.write(os.urandom(n))


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _drop_checksums(ckpt):
    path = os.path.join(ckpt, "checkpoint.json")
    with open(path) as f:
        info = json.load(f)
    del info["sha256"]
    with open(path, "w") as f:
        json.dump(info, f)


# ------------------------------------------------------------- 1. corruption is found --

def test_checkpoint_json_records_a_sha256_of_every_file(run2):
    ckpt = run2 / "checkpoints" / "step_000002"
    sums = json.loads((ckpt / "checkpoint.json").read_text())["sha256"]
    assert {"model.safetensors", TRAINER_STATE, "config.json", "run_config.yaml", "tokenizer.json"} <= set(sums)
    assert "checkpoint.json" not in sums


@pytest.mark.parametrize("fault", ["weights: 1 KB overwritten", "trainer state truncated", "weights truncated",
                                   "trainer state truncated, no checksums"])
def test_resume_falls_back_from_a_bad_newest_checkpoint(run2, capsys, fault):
    bad_dir = run2 / "checkpoints" / "step_000002"
    bad = bad_dir / (TRAINER_STATE if "trainer state" in fault else "model.safetensors")
    if "no checksums" in fault:  # a checkpoint written before checksums were recorded
        _drop_checksums(bad_dir)
    (_overwrite_middle if "overwritten" in fault else _truncate)(bad)
    before = file_tree(run2)

    ckpt = resolve_resumable(str(run2))
    assert ckpt.endswith("step_000001")
    warning = one_line(capsys.readouterr().err)
    assert warning.startswith("warning: ") and str(bad) in warning and ckpt in warning
    weights, state, _ = load_checkpoint(ckpt)  # what resume loads next
    assert state.step == 1 and weights
    # A bad checkpoint named explicitly: one line naming the file, no fallback.
    with pytest.raises(CheckpointError) as e:
        resolve_resumable(str(bad_dir))
    assert str(bad) in one_line(str(e.value))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(str(bad_dir))
    assert str(bad) in one_line(str(e.value))
    assert file_tree(run2) == before  # nothing deleted or rewritten, the bad checkpoint kept to look at


def test_generate_app_and_export_refuse_corrupt_weights(run2, tmp_path, capsys):
    """A corrupt checkpoint named explicitly is refused; a run directory (generate.py --model RUN, the
    app, export) falls back to its newest good checkpoint, saying so."""
    bad = run2 / "checkpoints" / "step_000002" / "model.safetensors"
    good, _ = load(str(run2 / "checkpoints" / "step_000001"))
    _overwrite_middle(bad)
    before = file_tree(run2)
    with pytest.raises(CheckpointError) as e:
        load(str(run2 / "checkpoints" / "step_000002"))
    assert str(bad) in one_line(str(e.value)) and "corrupt" in str(e.value)
    capsys.readouterr()
    model, _ = load(str(run2))
    warning = one_line(capsys.readouterr().err)
    assert warning.startswith(f"warning: {bad}: corrupt") and warning.endswith(
        f"loading {run2 / 'checkpoints' / 'step_000001'} instead, the newest good checkpoint")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), good.state_dict().values()))
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt"):  # named: no fallback
        export_run(str(run2), str(tmp_path / "out"), str(run2 / "checkpoints" / "step_000002"))
    assert not (tmp_path / "out").exists()
    export_run(str(run2), str(tmp_path / "out"))  # the run: its newest good checkpoint, said
    assert one_line(capsys.readouterr().err).endswith(f"loading {run2 / 'checkpoints' / 'step_000001'} instead, the "
                                                      f"newest good checkpoint")
    exported, _ = load(str(tmp_path / "out"))
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), good.state_dict().values()))
    assert file_tree(run2) == before  # nothing deleted or rewritten
    _overwrite_middle(run2 / "checkpoints" / "step_000001" / "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        load(str(run2))
    msg = one_line(str(e.value))
    assert msg.startswith(f"{run2}: no checkpoint of the run can be loaded") and "step_000001" in msg


def test_checkpoints_without_checksums_still_load(run2):
    ckpt = str(run2 / "checkpoints" / "step_000002")
    _drop_checksums(ckpt)
    assert resolve_resumable(str(run2)) == ckpt
    assert load_checkpoint(ckpt)[1].step == 2
    load(ckpt)


def test_all_checkpoints_bad_is_one_line_naming_each(run2, capsys):
    for step in (1, 2):
        _truncate(run2 / "checkpoints" / f"step_00000{step}" / TRAINER_STATE)
    with pytest.raises(CheckpointError) as e:
        resolve_resumable(str(run2))
    msg = one_line(str(e.value))
    assert "step_000001" in msg and "step_000002" in msg and "no checkpoint of the run can be resumed" in msg


def test_nan_weights_name_the_tensor(tmp_path, model, tokenizer, capsys):
    run = tmp_path / "run"
    save_step(run, model, tokenizer, 1)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    bad = save_step(run, model, tokenizer, 2)
    key = "model.layers.0.mlp.down_proj.weight"
    for call in (lambda: load_checkpoint(bad), lambda: load(bad), lambda: resolve_resumable(bad)):
        with pytest.raises(ValueError) as e:
            call()
        msg = one_line(str(e.value))
        assert key in msg and "NaN" in msg and "differs" not in msg
    assert resolve_resumable(str(run)).endswith("step_000001")  # resume falls back
    assert key in capsys.readouterr().err
    # Infinity in the tied embedding: its own message, not "lm_head differs from embed".
    state = W.read_safetensors(bad)
    state[key] = torch.zeros_like(state[key])
    state["model.embed_tokens.weight"][3, 1] = float("inf")
    with pytest.raises(ValueError) as e:
        W.load_state_checked(SmolLM(get_preset("tiny")), state, bad)
    msg = one_line(str(e.value))
    assert "model.embed_tokens.weight" in msg and "1 inf" in msg and "differs" not in msg


def test_export_errors_are_one_line(run2, tmp_path, capsys, monkeypatch):
    """A corrupt checkpoint named by --checkpoint, a disk that refuses the output, a checkpoint given as
    the run."""
    ckpt = run2 / "checkpoints" / "step_000002"
    _overwrite_middle(ckpt / "model.safetensors")
    assert CT.main(["export", str(run2), str(tmp_path / "out"), "--checkpoint", str(ckpt)]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"train.py export: error: {ckpt / 'model.safetensors'}: corrupt")
    good = str(run2 / "checkpoints" / "step_000001")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(files.tempfile, "mkdtemp", full)
        assert CT.main(["export", str(run2), str(tmp_path / "out"), "--checkpoint", good]) == 2
    assert one_line(capsys.readouterr().err) == (f"train.py export: error: cannot write {tmp_path / 'out'}: No space "
                                                 f"left on device (the previous version, if any, is unchanged)")
    assert CT.main(["export", good, str(tmp_path / "out")]) == 2
    assert one_line(capsys.readouterr().err) == (f"train.py export: error: {good} is a checkpoint, not a run "
                                                 f"directory; export it with: train.py export RUN OUT --checkpoint "
                                                 f"{good}")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------- 2. export never over its run --

@pytest.mark.parametrize("where", ["the run", "the run's parent", "inside the run", "a checkpoint",
                                   "inside a checkpoint", "a symlink to the run", "the run via .."])
def test_export_refuses_an_output_that_is_contains_or_lies_inside_the_run(run2, tmp_path, capsys, where):
    (tmp_path / "keep.txt").write_text("mine")
    out = {"the run": run2, "the run's parent": tmp_path, "inside the run": run2 / "export",
           "a checkpoint": run2 / "checkpoints" / "step_000001",
           "inside a checkpoint": run2 / "checkpoints" / "step_000002" / "hf",
           "a symlink to the run": tmp_path / "link", "the run via ..": run2 / "checkpoints" / ".."}[where]
    if where == "a symlink to the run":
        os.symlink(run2, out)
    before = file_tree(tmp_path)
    assert CT.main(["export", str(run2), str(out), "--overwrite"]) == 2
    err = one_line(capsys.readouterr().err)
    assert "refusing to export" in err and str(out) in err
    with pytest.raises(UnsafeOutputError):
        export_run(str(run2), str(out), overwrite=True)
    with pytest.raises(UnsafeOutputError):  # an explicit checkpoint is protected as well
        export_run(str(run2), str(out), checkpoint=str(run2 / "checkpoints" / "step_000001"), overwrite=True)
    assert file_tree(tmp_path) == before  # the run (and all beside it) intact


def test_export_beside_the_run_still_works(run2, tmp_path):
    out = export_run(str(run2), str(tmp_path / "run-hf"))  # a name that starts with the run's
    assert os.path.isfile(os.path.join(out, "model.safetensors"))


# ---------------------------------------------------------- 3. files are world-readable --

def test_checkpoint_and_export_files_are_0644(tmp_path, model, tokenizer):
    old = os.umask(0o077)  # a strict umask: writers that honour it would make 0600 files
    try:
        ckpt = save_step(tmp_path / "run", model, tokenizer, 1)
        out = export_run(str(tmp_path / "run"), str(tmp_path / "hf"))
    finally:
        os.umask(old)
    for d in (ckpt, out):
        assert os.stat(d).st_mode & 0o777 == 0o755, d
        names = os.listdir(d)
        assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(names)
        for name in names:
            assert os.stat(os.path.join(d, name)).st_mode & 0o777 == 0o644, (d, name)


# ------------------------------------------------------- 4. a full or read-only disk --

@pytest.mark.parametrize("raised", [OSError(errno.ENOSPC, "No space left on device"),
                                    # what safetensors' own writer raises on a full disk
                                    RuntimeError("Error while serializing: I/O error: No space left on device "
                                                 "(os error 28)")])
def test_disk_full_while_writing_a_checkpoint(run2, model, tokenizer, monkeypatch, raised):
    before = file_tree(run2)

    def full(*a, **k):
        raise raised

    monkeypatch.setattr(W, "save_file", full)
    with pytest.raises(WriteError) as e:
        save_step(run2, model, tokenizer, 3)
    msg = one_line(str(e.value))
    assert str(run2 / "checkpoints" / "step_000003") in msg and "No space left on device" in msg
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError)
    assert file_tree(run2) == before  # no temporary directory, `latest` and the checkpoints as they were


def test_disk_full_while_writing_a_file(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")

    def chunks():
        yield b"new"
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError) as e:
        atomic_write_bytes(str(path), chunks())
    assert one_line(str(e.value)) == (f"cannot write {path}: No space left on device "
                                       f"(the previous version, if any, is unchanged)")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.json"]


def test_other_write_errors_pass_through_unchanged(tmp_path):
    def chunks():
        raise OSError(errno.EIO, "Input/output error")
        yield b""

    with pytest.raises(OSError) as e:
        atomic_write_bytes(str(tmp_path / "f"), chunks())
    assert not isinstance(e.value, WriteError) and e.value.errno == errno.EIO


@pytest.mark.parametrize("code, cause", [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system")])
def test_read_only_directory(tmp_path, monkeypatch, code, cause):
    """A directory that refuses new files: the temporary file cannot be made. (Injected where the OS
    says it: a chmod 0555 does not stop root, who runs CI.)"""
    d = tmp_path / "ro"
    d.mkdir()
    (d / "f.json").write_text("old")
    (d / "ckpt").mkdir()
    (d / "ckpt" / "a").write_text("old a")

    def refuse(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    monkeypatch.setattr(files.tempfile, "mkdtemp", refuse)
    with pytest.raises(WriteError) as e:
        atomic_write_json(str(d / "f.json"), {"new": 1})
    assert one_line(str(e.value)).startswith(f"cannot write {d / 'f.json'}: {cause}")
    assert e.value.errno == code
    with pytest.raises(WriteError) as e, atomic_dir(str(d / "ckpt"), overwrite=True) as tmp:
        with open(os.path.join(tmp, "a"), "w") as f:
            f.write("new a")
    assert one_line(str(e.value)).startswith(f"cannot write {d / 'ckpt'}: {cause}")
    assert (d / "f.json").read_text() == "old" and (d / "ckpt" / "a").read_text() == "old a"
    assert sorted(os.listdir(d)) == ["ckpt", "f.json"]


# ------------------------------------------------------------- round 3: checkpoint metadata --

@pytest.mark.parametrize("latest", [b"", b"\n", b"step_000009\n", b"../..\n", b"\xff\xfe\x00"])
def test_a_latest_that_names_no_checkpoint_falls_back_to_the_newest(run2, capsys, latest):
    # An empty `latest` once named the checkpoints directory itself: --resume refused with a wrong reason.
    path = run2 / "checkpoints" / "latest"
    path.write_bytes(latest)
    before = file_tree(run2)
    ckpt = resolve_resumable(str(run2))
    assert ckpt == str(run2 / "checkpoints" / "step_000002")
    warning = one_line(capsys.readouterr().err)
    assert warning.startswith(f"warning: {path} names no checkpoint") and warning.endswith(ckpt)
    assert load_checkpoint(ckpt)[1].step == 2
    assert file_tree(run2) == before


@pytest.mark.parametrize("info", ["[1, 2]", '"step 2"', "null", '{"step": "two"}', '{"sha256": ["model.safetensors"]}',
                                  '{"sha256": {"model.safetensors": 7}}', '{"loss": "low"}', "\xff not text"])
def test_a_checkpoint_json_of_the_wrong_shape_is_a_damaged_checkpoint(run2, tmp_path, capsys, info):
    """Valid JSON of the wrong shape was an AttributeError traceback in resume, generate and export:
    now one line naming the file, then the newest good checkpoint, in each."""
    bad = run2 / "checkpoints" / "step_000002" / "checkpoint.json"
    bad.write_bytes(info.encode("latin-1"))
    before = file_tree(run2)
    older = str(run2 / "checkpoints" / "step_000001")
    assert resolve_resumable(str(run2)) == older
    warning = one_line(capsys.readouterr().err)
    assert warning.startswith(f"warning: {bad}: ") and "the checkpoint is damaged" in warning, warning
    load(str(run2))
    assert one_line(capsys.readouterr().err).startswith(f"warning: {bad}: ")
    export_run(str(run2), str(tmp_path / "out"))
    assert one_line(capsys.readouterr().err).startswith(f"warning: {bad}: ")
    assert "| checkpoint | step 1 |" in (tmp_path / "out" / "README.md").read_text()
    assert CT.main(["--resume", str(run2 / "checkpoints" / "step_000002")]) == 2  # named: no fallback
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"error: {bad}: ") and "the checkpoint is damaged" in err, err
    assert file_tree(run2) == before
