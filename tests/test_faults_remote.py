"""Faults around a run's remote copy (smollm.remote): a run writes only to its own copy (a local copy of
a mirrored run, a copy of a remote prefix, a new run pointed at another's store, an export over the
run's own copy), a store that loses objects, a fetch whose newest checkpoint lost its optimizer state.
Stores here are file:// (the same fsspec code as S3: tests/test_remote.py runs it against a real S3
server)."""

import json
import os
import shutil

from conftest import file_tree, one_line, save_step
from conftest import micro_run_overrides as _overrides

import smollm.cli.train as CT
import smollm.remote as R
from smollm.checkpoint import latest_checkpoint
from smollm.remote.owner import owner_record, read_identity
from smollm.runs import OWNER, TRAINER_STATE, Run


def _train(run, dataset, gguf_path, *extra) -> int:
    return CT.main(_overrides(run, dataset, gguf_path, *extra))


def _url(path) -> str:
    return f"file://{path}"


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return one_line(err)


def _mirrored(tmp_path, dataset, gguf_path, name="a"):
    """A 6-step run with checkpoints at 3 and 6 mirrored to file://<tmp>/store-<name>."""
    run, store = tmp_path / name, tmp_path / f"store-{name}"
    assert _train(run, dataset, gguf_path, f"log.remote={_url(store)}") == 0
    return run, store


def test_a_local_copy_of_a_mirrored_run_never_writes_the_original_copy(tmp_path, dataset, gguf_path, capsys):
    run, store = _mirrored(tmp_path, dataset, gguf_path)
    owner = json.loads((store / OWNER).read_text())
    assert owner["path"] == os.path.realpath(run) and owner["id"] == read_identity(str(run))["id"]
    shutil.copytree(run, tmp_path / "copy")
    before = file_tree(store)
    capsys.readouterr()
    assert CT.main(["--resume", str(tmp_path / "copy"), "train.max_steps=9"]) == 2
    assert _err(capsys) == (f"error: log.remote: {_url(store)} is the remote copy of the run at {os.path.realpath(run)} "
                            f"on {owner['host']}, and {os.path.realpath(tmp_path / 'copy')} is a copy of that run; give "
                            f"the copy its own log.remote=URL (or log.remote= for none)")
    assert file_tree(store) == before
    assert latest_checkpoint(str(tmp_path / "copy")).endswith("step_000006")  # nothing trained
    # Given its own store, the copy goes on; the original's copy stays as it was.
    assert CT.main(["--resume", str(tmp_path / "copy"), "train.max_steps=9", f"log.remote={_url(tmp_path / 'other')}"]) == 0
    assert file_tree(store) == before
    assert (tmp_path / "other" / "checkpoints" / "latest").read_text() == "step_000009\n"
    # And the original still writes its own.
    assert CT.main(["--resume", str(run), "train.max_steps=9"]) == 0
    assert (store / "checkpoints" / "latest").read_text() == "step_000009\n"


def test_a_copy_of_a_remote_prefix_mirrors_to_itself_not_to_the_original(tmp_path, dataset, gguf_path, capsys):
    run, store = _mirrored(tmp_path, dataset, gguf_path)
    shutil.copytree(store, tmp_path / "store-copy")
    before = file_tree(store)
    capsys.readouterr()
    assert CT.main(["--resume", _url(tmp_path / "store-copy"), f"log.out_dir={tmp_path / 'back'}",
                    "train.max_steps=9"]) == 0
    out = capsys.readouterr().out
    assert (f"resume: fetching {_url(tmp_path / 'store-copy')} into {tmp_path / 'back'}; the run goes on mirroring "
            f"to {_url(tmp_path / 'store-copy')}") in out
    assert f"this run, fetched from it, now writes it" in out
    assert file_tree(store) == before  # the original's copy: untouched
    assert (tmp_path / "store-copy" / "checkpoints" / "latest").read_text() == "step_000009\n"
    owner = json.loads((tmp_path / "store-copy" / OWNER).read_text())
    assert owner["path"] == os.path.realpath(tmp_path / "back")
    # The original run is now the copy's origin, not its owner: it still writes its own store.
    assert CT.main(["--resume", str(run), "train.max_steps=9"]) == 0


def test_resume_from_the_url_takes_the_copy_over_and_the_old_directory_is_refused(tmp_path, dataset, gguf_path,
                                                                                   capsys):
    """A spot machine reclaimed: the run comes back from its store on another disk. Were the old
    directory to come back too, it may not write over what the new one uploads."""
    run, store = _mirrored(tmp_path, dataset, gguf_path)
    assert CT.main(["--resume", _url(store), f"log.out_dir={tmp_path / 'new'}", "train.max_steps=9"]) == 0
    assert json.loads((store / OWNER).read_text())["path"] == os.path.realpath(tmp_path / "new")
    before = file_tree(store)
    capsys.readouterr()
    assert CT.main(["--resume", str(run), "train.max_steps=12"]) == 2
    assert f"is the remote copy of the run at {os.path.realpath(tmp_path / 'new')}" in _err(capsys)
    assert file_tree(store) == before


def test_a_moved_run_keeps_its_store(tmp_path, dataset, gguf_path, capsys):
    run, store = _mirrored(tmp_path, dataset, gguf_path)
    os.rename(run, tmp_path / "moved")
    capsys.readouterr()
    assert CT.main(["--resume", str(tmp_path / "moved"), "train.max_steps=9"]) == 0
    assert (f"remote: {_url(store)} was the copy of {os.path.realpath(run)}, which no longer holds the run; "
            f"{os.path.realpath(tmp_path / 'moved')} now writes it") in capsys.readouterr().out
    assert (store / "checkpoints" / "latest").read_text() == "step_000009\n"


def test_a_new_run_never_takes_over_a_store_that_holds_a_run(tmp_path, dataset, gguf_path, capsys):
    run, store = _mirrored(tmp_path, dataset, gguf_path)
    before = file_tree(store)
    capsys.readouterr()
    assert _train(tmp_path / "new" / "b", dataset, gguf_path, f"log.remote={_url(store)}") == 2
    owner = json.loads((store / OWNER).read_text())
    assert _err(capsys) == (f"error: log.remote: {_url(store)} already holds a run (the copy of {owner['path']} on "
                            f"{owner['host']}; checkpoints up to step_000006); a new run never writes over one: "
                            f"choose another log.remote=URL")
    assert file_tree(store) == before and not (tmp_path / "new").exists()
    # A store that another run claimed before its first checkpoint: refused as well.
    (tmp_path / "claimed").mkdir()
    (tmp_path / "claimed" / OWNER).write_text(json.dumps({"id": "f" * 32, "path": "/elsewhere/run", "host": "h"}))
    assert _train(tmp_path / "c", dataset, gguf_path, f"log.remote={_url(tmp_path / 'claimed')}") == 2
    assert _err(capsys) == (f"error: log.remote: {_url(tmp_path / 'claimed')} holds another run (the copy of "
                            f"/elsewhere/run on h); a run writes only to its own remote copy: choose another "
                            f"log.remote=URL")
    # A store whose owner.json is damaged is named.
    (tmp_path / "claimed" / OWNER).write_text("{not json")
    assert _train(tmp_path / "d", dataset, gguf_path, f"log.remote={_url(tmp_path / 'claimed')}") == 2
    assert _err(capsys).startswith(f"error: log.remote: {_url(tmp_path / 'claimed')}/{OWNER} is not an owner record")


def test_a_run_restarted_before_its_first_checkpoint_keeps_its_store(tmp_path, dataset, gguf_path, capsys):
    """A start that failed after claiming its store (no checkpoint yet) may start again into it."""
    run, store = tmp_path / "a", tmp_path / "store"
    assert _train(run, dataset, gguf_path, f"log.remote={_url(store)}", "train.max_steps=2", "log.ckpt_every=100",
                  "log.eval_every=100") == 0  # the final checkpoint at step 2 claims the store
    shutil.rmtree(run / "checkpoints")
    shutil.rmtree(store / "checkpoints")  # as if the start had died before any checkpoint
    assert _train(run, dataset, gguf_path, f"log.remote={_url(store)}", "train.max_steps=2") == 0
    assert (store / "checkpoints" / "latest").read_text() == "step_000002\n"


def test_export_onto_the_runs_own_remote_copy_is_refused(tmp_path, dataset, gguf_path, capsys):
    run, store = _mirrored(tmp_path, dataset, gguf_path)
    before = file_tree(store)
    capsys.readouterr()
    for url in (_url(store), _url(store) + "/"):
        assert CT.main(["export", str(run), url, "--overwrite"]) == 2
        assert one_line(capsys.readouterr().err) == (
            f"train.py export: error: refusing to export to {url}: it is the remote copy of the run {run} "
            f"itself (replacing it would delete the run's copy); choose another URL")
    assert file_tree(store) == before
    assert CT.main(["export", str(run), _url(tmp_path / "exported")]) == 0


def test_export_of_another_runs_checkpoint_is_refused(tmp_path, dataset, gguf_path, capsys):
    for name in ("a", "b"):
        assert _train(tmp_path / name, dataset, gguf_path, "train.max_steps=3") == 0
    capsys.readouterr()
    ckpt = tmp_path / "b" / "checkpoints" / "step_000003"
    assert CT.main(["export", str(tmp_path / "a"), str(tmp_path / "out"), "--checkpoint", str(ckpt)]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"train.py export: error: --checkpoint {ckpt} is not a checkpoint of {tmp_path / 'a'} (it belongs to the run "
        f"{tmp_path / 'b'}); the model card describes one run: export it with train.py export {tmp_path / 'b'} OUT "
        f"--checkpoint {ckpt}")
    loose = tmp_path / "loose"
    shutil.copytree(ckpt, loose)
    assert CT.main(["export", str(tmp_path / "a"), str(tmp_path / "out"), "--checkpoint", str(loose)]) == 2
    assert "it lies in no run's checkpoints/ directory" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
    assert CT.main(["export", str(tmp_path / "b"), str(tmp_path / "out"), "--checkpoint", str(ckpt)]) == 0


# ------------------------------------------------------------- a store that loses objects --

def test_the_uploader_checks_what_the_store_holds_and_uploads_what_it_lost(tmp_path, model, tokenizer):
    run = tmp_path / "r"
    save_step(run, model, tokenizer, 1)
    warned = []
    up = R.Uploader(Run(str(run)), R.connect(_url(tmp_path / "store")), keep_trainer_states=2, warn=warned.append)
    up.sync()
    assert up.wait(60) and warned == []
    # The store loses a whole checkpoint and a file of another (a deleted prefix, a restarted server).
    save_step(run, model, tokenizer, 2)
    up.sync()
    assert up.wait(60)
    shutil.rmtree(tmp_path / "store" / "checkpoints" / "step_000001")
    os.unlink(tmp_path / "store" / "checkpoints" / "step_000002" / "model.safetensors")
    save_step(run, model, tokenizer, 3)
    up.sync()
    assert up.close(60) == [] and up.error is None
    assert warned == [f"warning: remote: {_url(tmp_path / 'store')} had lost step_000001, step_000002 (uploaded "
                      f"before); uploaded again"]
    for step in (1, 2, 3):
        name = f"step_00000{step}"
        local = {k: v for k, v in file_tree(run / "checkpoints" / name).items()}
        there = file_tree(tmp_path / "store" / "checkpoints" / name)
        assert {k: v for k, v in local.items() if k != TRAINER_STATE} == {k: v for k, v in there.items()
                                                                          if k != TRAINER_STATE}


def test_the_uploader_stops_when_another_directory_takes_the_store(tmp_path, model, tokenizer):
    run = tmp_path / "r"
    save_step(run, model, tokenizer, 1)
    warned = []
    me = owner_record({"id": "a" * 32}, str(run))
    up = R.Uploader(Run(str(run)), R.connect(_url(tmp_path / "store")), keep_trainer_states=2, warn=warned.append,
                    owner=me)
    up.sync()
    assert up.wait(60) and json.loads((tmp_path / "store" / OWNER).read_text()) == me
    (tmp_path / "store" / OWNER).write_text(json.dumps({**me, "path": "/new/home", "host": "spot-2"}))
    before = file_tree(tmp_path / "store")
    save_step(run, model, tokenizer, 2)
    up.sync()
    assert up.close(60) == ["step_000002"]
    assert warned == [f"warning: remote: {_url(tmp_path / 'store')} is now the copy of /new/home on spot-2; this run "
                      f"no longer uploads there (its checkpoints stay in {run / 'checkpoints'})"]
    assert file_tree(tmp_path / "store") == before


def test_a_fetch_names_the_newer_checkpoints_it_skips(tmp_path, model, tokenizer, capsys):
    run = tmp_path / "r"
    for step in (1, 2):
        save_step(run, model, tokenizer, step)
    up = R.Uploader(Run(str(run)), R.connect(_url(tmp_path / "store")), keep_trainer_states=2)
    up.sync()
    assert up.close(60) == []
    os.unlink(tmp_path / "store" / "checkpoints" / "step_000002" / TRAINER_STATE)  # lost from the store
    capsys.readouterr()
    R.fetch_run(_url(tmp_path / "store"), str(tmp_path / "back"))
    assert one_line(capsys.readouterr().err) == (
        f"warning: {_url(tmp_path / 'store')}/checkpoints/step_000002 has no {TRAINER_STATE} (lost from the store?); "
        f"resuming from step_000001, the newest checkpoint there with one")
    assert latest_checkpoint(str(tmp_path / "back")).endswith("step_000001")
    ident = read_identity(str(tmp_path / "back"))
    assert ident["home"] == os.path.realpath(tmp_path / "back") and ident["remote"] == _url(tmp_path / "store")


# ------------------------------------------------------------- vague one-liners, made to name the cause --

def test_a_store_url_without_a_place_or_with_wrong_typed_options_is_named(tmp_path, dataset, gguf_path, capsys):
    cases = {  # overrides -> the one line (it was "Parameter validation failed:", cut off, or a botocore TypeError)
        ("log.remote=s3://",): "error: log.remote: s3:// names no place in the store; give a bucket and a prefix, like "
                               "s3://bucket/runs/name",
        ("log.remote=s3://b/x", "log.remote_options={endpoint_url: 5}"):
            "error: log.remote_options.endpoint_url: expected a string, got 5",
        ("log.remote=s3://b/x", "log.remote_options={endpoint_url: minio:9000}"):
            "error: log.remote_options.endpoint_url: 'minio:9000' is not an http(s):// URL (like http://127.0.0.1:9000)",
        ("log.remote=s3://b/x", "log.remote_options={config_kwargs: fast}"):
            "error: log.remote_options.config_kwargs: expected a mapping, got 'fast'",
        ("log.remote=s3://b/x", "log.remote_options=fast"): "error: log.remote_options: expected a mapping, got 'fast'",
    }
    for extra, line in cases.items():
        assert _train(tmp_path / "run", dataset, gguf_path, *extra) == 2
        assert _err(capsys) == line
        assert not (tmp_path / "run").exists()


def test_a_store_error_that_runs_on_for_lines_is_said_whole():
    assert R.describe(ValueError("Parameter validation failed:\nInvalid bucket name \"\": Bucket name must match")) == (
        'ValueError: Parameter validation failed: Invalid bucket name "": Bucket name must match')
