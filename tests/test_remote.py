"""A run's copy in S3 (smollm.remote), against a real S3 server on 127.0.0.1: moto's server speaks the
S3 HTTP API, s3fs talks to it over HTTP as to AWS. Uploads of every checkpoint and run file, a resume
from the URL on an empty disk (the same losses, to the bit), a store that goes away mid-run and comes
back, a SIGKILL mid-upload, a wrong bucket and bad credentials at start-up."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import torch
from moto import server as moto_server
from conftest import micro_run_overrides, one_line, save_step, sigterm_during_step

import smollm.remote as R
import smollm.remote.store as RS
import smollm.cli.train as CT
import smollm.training.loop as L
import smollm.training.trainer as TR
from smollm.checkpoint import TRAINER_STATE, latest_checkpoint
from smollm.metrics import read_metrics
from smollm.runs import OWNER, RUN_FILES, RUN_ID, Run
from smollm.sources import load
from smollm.train_config import RunConfig, apply_overrides

SECRET = "smollm-test-secret-never-written"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A real S3 endpoint on 127.0.0.1 (restartable on the same port: its buckets live in this process)."""
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield {"endpoint": f"http://127.0.0.1:{port}", "server": server, "port": port}
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    # Credentials where boto looks for them (never in a config); moto accepts any.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "smollm-test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setattr(RS, "BACKOFF", 0.05)  # the retries' pauses, short for the tests


@pytest.fixture
def bucket(s3):
    name = f"b-{uuid.uuid4().hex[:12]}"
    store = R.connect(f"s3://{name}", {"endpoint_url": s3["endpoint"]})
    store.fs.mkdir(name)
    return f"s3://{name}"


def _remote(s3, url):
    return [f"log.remote={url}", f"log.remote_options={{endpoint_url: {s3['endpoint']}}}"]


def _cfg(run_dir, dataset, gguf_path, *extra) -> RunConfig:
    return apply_overrides(RunConfig(), micro_run_overrides(run_dir, dataset, gguf_path, *extra)).validate()


def _store(s3, url) -> R.Store:
    return R.connect(url, {"endpoint_url": s3["endpoint"]})


def _losses(run_dir):
    return {m["step"]: m["loss"] for m in read_metrics(str(run_dir)) if "loss" in m}


def _local_files(run_dir) -> dict[str, bytes]:
    out = {}
    for root, _, names in os.walk(run_dir):
        for n in names:
            path = os.path.join(root, n)
            out[os.path.relpath(path, run_dir).replace(os.sep, "/")] = open(path, "rb").read()
    return out


def _remote_files(store: R.Store) -> dict[str, bytes]:
    return {p[len(store.root) + 1:]: store.fs.cat_file(p) for p in store.fs.find(store.root)}


# ------------------------------------------------------------- uploads --

def test_a_run_uploads_every_checkpoint_and_run_file(s3, bucket, tmp_path, dataset, gguf_path):
    url = f"{bucket}/runs/a"
    run = tmp_path / "a"
    L.train(_cfg(run, dataset, gguf_path, *_remote(s3, url), "log.keep_trainer_states=1"))
    local, remote = _local_files(run), _remote_files(_store(s3, url))
    # The remote holds what the local run holds (its trainer states pruned the same way), byte for byte;
    # the local console log has one more line, said after the last upload: that it went well.
    kept = {k: v for k, v in local.items() if not k.startswith("tensorboard/") and k != RUN_ID}
    # The store says which run directory writes it; the run says which run it is.
    owner = json.loads(remote.pop(OWNER))
    assert owner["path"] == os.path.realpath(run) and owner["id"] == json.loads(local[RUN_ID])["id"]
    assert set(remote) == set(kept), set(remote) ^ set(kept)
    assert all(remote[k] == kept[k] for k in kept if k != "train.log")
    assert kept["train.log"].startswith(remote["train.log"])
    assert kept["train.log"][len(remote["train.log"]):] == f"remote: {url} holds the run up to step_000006\n".encode()
    assert {f"checkpoints/step_00000{s}/model.safetensors" for s in (3, 6)} <= set(remote)
    assert f"checkpoints/step_000003/{TRAINER_STATE}" not in remote  # pruned there as here
    assert remote["checkpoints/latest"] == b"step_000006\n"
    assert set(RUN_FILES) <= set(remote)  # config, metrics, samples, loss curve, console log
    assert b"| val loss" in remote["train.log"] and b"\r" not in remote["train.log"]
    # No credential anywhere: not in the config, the checkpoints, the logs.
    assert not [k for k, v in {**local, **remote}.items() if SECRET.encode() in v or b"smollm-test-key" in v]


def test_resume_from_the_url_on_an_empty_disk_is_exact(s3, bucket, tmp_path, dataset, gguf_path, monkeypatch):
    whole = L.train(_cfg(tmp_path / "whole", dataset, gguf_path))
    url = f"{bucket}/runs/spot"
    spot = tmp_path / "spot"
    with monkeypatch.context() as m:
        sigterm_during_step(m, 4)  # the spot instance is reclaimed during step 4
        first = L.train(_cfg(spot, dataset, gguf_path, *_remote(s3, url)))
    assert first["stopped"] == "SIGTERM" and first["step"] == 4
    assert _store(s3, url).latest() == "step_000004"  # the last checkpoint was awaited before exit
    shutil.rmtree(spot)  # the machine is gone with its disk

    assert CT.main(["--resume", url, f"log.remote_options={{endpoint_url: {s3['endpoint']}}}"]) == 0
    assert whole["step"] == 6
    a, b = _losses(tmp_path / "whole"), _losses(spot)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6] and a == b  # to the bit: CPU, fp32
    assert _store(s3, url).latest() == "step_000006"  # and the resumed run keeps uploading


def test_resume_from_the_url_never_overwrites_a_local_run(s3, bucket, tmp_path, dataset, gguf_path, capsys):
    url = f"{bucket}/runs/b"
    run = tmp_path / "b"
    L.train(_cfg(run, dataset, gguf_path, *_remote(s3, url), "train.max_steps=3"))
    before = _local_files(run)
    capsys.readouterr()
    assert CT.main(["--resume", url, f"log.remote_options={{endpoint_url: {s3['endpoint']}}}"]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"error: {run} already holds a run with checkpoints; resume it with --resume {run}")
    assert _local_files(run) == before


def test_a_store_that_goes_away_and_comes_back(s3, bucket, tmp_path, dataset, gguf_path, monkeypatch, capsys):
    """Down after the first checkpoint: a warning naming what is missing, training goes on; back
    before the third: everything missing is uploaded then."""
    url = f"{bucket}/runs/c"
    real_save = TR.Trainer.save
    seen = {}

    def save_then(self):
        real_save(self)
        assert self.uploader.wait(60)
        if self.step == 3:
            s3["server"].stop()
        if self.step == 6:
            seen["missing"] = self.uploader.missing()
            s3["server"] = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=s3["port"], verbose=False)
            s3["server"].start()

    monkeypatch.setattr(TR.Trainer, "save", save_then)
    monkeypatch.setattr(R, "RETRIES", 2)
    out = L.train(_cfg(tmp_path / "c", dataset, gguf_path, *_remote(s3, url), "train.max_steps=9"))
    assert out["step"] == 9
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: remote:")]
    assert len(warnings) == 1 and "step_000006 not uploaded to" in warnings[0], warnings
    assert "training goes on" in warnings[0]
    assert seen["missing"] == ["step_000006"]
    store = _store(s3, url)
    assert [n for _, n in store.checkpoints()] == ["step_000003", "step_000006", "step_000009"]
    assert store.latest() == "step_000009"


def test_the_last_upload_is_awaited_with_a_bound_that_says_what_is_missing(s3, bucket, tmp_path, dataset,
                                                                            gguf_path, monkeypatch, capsys):
    url = f"{bucket}/runs/d"
    real_put = R.Store.put
    slowed = []

    def slow_put(self, local, rel):
        if "step_000006" in rel and not slowed:
            slowed.append(rel)
            time.sleep(3)
        return real_put(self, local, rel)

    monkeypatch.setattr(R.Store, "put", slow_put)
    L.train(_cfg(tmp_path / "d", dataset, gguf_path, *_remote(s3, url), "log.remote_wait=0.5"))
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if "after waiting" in x]
    assert line == [f"warning: remote: not uploaded to {url} after waiting 0.5 s: step_000006 (they are in "
                    f"{tmp_path / 'd' / 'checkpoints'}); run train.py --resume {tmp_path / 'd'} to upload them"]


# ------------------------------------------------------------- a kill mid-upload --

KILLED_UPLOADER = textwrap.dedent("""
    import os, sys, time
    import smollm.remote as R
    from smollm.runs import Run
    run, url, endpoint, marker = sys.argv[1:5]
    real_put = R.Store.put
    def put(self, local, rel):
        real_put(self, local, rel)
        if "step_000002" in rel:
            open(marker, "w").close()
            time.sleep(600)  # killed here, one file of step 2 uploaded
    R.Store.put = put
    up = R.Uploader(Run(run), R.connect(url, {"endpoint_url": endpoint}), keep_trainer_states=2)
    up.sync()
    up.wait(600)
""")


def test_sigkill_mid_upload_leaves_latest_on_the_previous_checkpoint(s3, bucket, tmp_path, model, tokenizer):
    url = f"{bucket}/runs/e"
    run = tmp_path / "e"
    save_step(run, model, tokenizer, 1)
    up = R.Uploader(Run(str(run)), _store(s3, url), keep_trainer_states=2)
    up.sync()
    assert up.close(60) == []
    save_step(run, model, tokenizer, 2)
    marker = tmp_path / "one-file-up"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_UPLOADER, str(run), url, s3["endpoint"], str(marker)],
                            env=env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the uploader never reached step 2"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    store = _store(s3, url)
    assert any(k.startswith("checkpoints/step_000002/") for k in _remote_files(store))  # half uploaded
    assert store.read("checkpoints/latest") == b"step_000001\n" and store.latest() == "step_000001"
    assert [n for _, n in store.checkpoints()] == ["step_000001"]  # step 2 has no checkpoint.json: unfinished
    fresh = tmp_path / "fresh"
    R.fetch_run(url, str(fresh), {"endpoint_url": s3["endpoint"]})
    assert latest_checkpoint(str(fresh)).endswith("step_000001")


# ------------------------------------------------------------- start-up errors --

def test_a_wrong_bucket_is_one_line_at_start_up(s3, tmp_path, dataset, gguf_path, capsys):
    run = tmp_path / "new" / "run"
    url = "s3://no-such-bucket-smollm/x"
    t0 = time.monotonic()
    assert CT.main(micro_run_overrides(run, dataset, gguf_path, *_remote(s3, url))) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"error: log.remote: cannot write to {url} (no such bucket")
    assert not (tmp_path / "new").exists()  # before anything: no run directory, no training
    assert time.monotonic() - t0 < 60


def test_bad_credentials_are_one_line_at_start_up(tmp_path, dataset, gguf_path, capsys):
    """A second S3 server that checks credentials (moto's IAM checks from the first request on):
    ours are unknown to it."""
    port = _free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "the second S3 server did not start"
                time.sleep(0.2)
        url = "s3://some-bucket/x"
        assert CT.main(micro_run_overrides(tmp_path / "run", dataset, gguf_path, f"log.remote={url}",
                                          f"log.remote_options={{endpoint_url: http://127.0.0.1:{port}}}")) == 2
    finally:
        proc.terminate()
        proc.wait()
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"error: log.remote: cannot write to {url} (access denied") and "credentials" in err
    assert SECRET not in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("option", ["key", "secret", "aws_secret_access_key", "token", "password"])
def test_credentials_in_the_config_are_refused(tmp_path, dataset, gguf_path, capsys, option):
    assert CT.main(micro_run_overrides(tmp_path / "run", dataset, gguf_path, "log.remote=s3://b/x",
                                      f"log.remote_options={{{option}: abc}}")) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"error: log.remote_options.{option}: credentials are never put in a run's config")
    assert not (tmp_path / "run").exists()


def test_a_remote_that_is_not_a_url_is_refused(tmp_path, dataset, gguf_path, capsys):
    assert CT.main(micro_run_overrides(tmp_path / "run", dataset, gguf_path, "log.remote=my-bucket/x")) == 2
    assert one_line(capsys.readouterr().err) == ("error: log.remote: must be a store URL like s3://bucket/prefix "
                                                 "(or null), got 'my-bucket/x'")


# ------------------------------------------------------------- readers: generate, the app, export --

def test_generate_and_export_take_the_url(s3, bucket, tmp_path, dataset, gguf_path, monkeypatch, capsys):
    url = f"{bucket}/runs/f"
    run = tmp_path / "f"
    L.train(_cfg(run, dataset, gguf_path, *_remote(s3, url), "train.max_steps=3"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3["endpoint"])  # readers take the endpoint from the environment
    monkeypatch.setenv("SMOLLM_CACHE", str(tmp_path / "cache"))
    ours, _ = load(str(run))
    for source in (url, f"{url}/checkpoints/step_000003"):
        theirs, tok = load(source)
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    from smollm.app import Models, _check_source

    assert _check_source(url) == url  # the app takes the URL as a model
    app_model, _, _ = Models().get(url)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), app_model.state_dict().values()))
    cached = R.cache_dir(url)
    assert sorted(os.listdir(os.path.join(cached, "step_000003"))) == sorted(
        n for n in os.listdir(latest_checkpoint(str(run))) if n != TRAINER_STATE)  # no optimizer state fetched

    out = f"{bucket}/exports/f"
    assert CT.main(["export", str(run), out]) == 0
    store = _store(s3, out)
    assert {"model.safetensors", "config.json", "README.md", "tokenizer.json"} <= set(store.listdir(""))
    capsys.readouterr()
    assert CT.main(["export", str(run), out]) == 2  # never over what is there unless asked
    assert one_line(capsys.readouterr().err) == (f"train.py export: error: {out} already holds files; pass "
                                                 f"--overwrite to replace them")
    assert CT.main(["export", str(run), out, "--overwrite"]) == 0


def test_any_fsspec_store(tmp_path, model, tokenizer):
    """The same code on another fsspec protocol (file://): the uploader, then a fetch for --resume."""
    run = tmp_path / "g"
    for step in (1, 2):
        save_step(run, model, tokenizer, step)
    url = f"file://{tmp_path / 'remote'}"
    up = R.Uploader(Run(str(run)), R.connect(url), keep_trainer_states=1)
    up.sync()
    assert up.close(60) == []
    assert os.path.isfile(tmp_path / "remote" / "checkpoints" / "step_000002" / TRAINER_STATE)
    assert not os.path.exists(tmp_path / "remote" / "checkpoints" / "step_000001" / TRAINER_STATE)
    assert R.fetch_run(url, str(tmp_path / "back")) == str(tmp_path / "back")
    assert latest_checkpoint(str(tmp_path / "back")).endswith("step_000002")


def test_an_optimizer_state_pruned_during_its_upload_is_not_an_error(tmp_path, model, tokenizer, monkeypatch, capsys):
    """A slow store: the run saved newer checkpoints and pruned this one's trainer_state.pt while it
    was on its way. The checkpoint is uploaded as the run now keeps it, without it."""
    run = tmp_path / "h"
    save_step(run, model, tokenizer, 1)
    state = run / "checkpoints" / "step_000001" / TRAINER_STATE
    real_put = R.Store.put

    def put(self, local, rel):
        if rel.endswith(TRAINER_STATE) and state.exists():
            state.unlink()  # save_checkpoint's pruning, on the training thread
        return real_put(self, local, rel)

    monkeypatch.setattr(R.Store, "put", put)
    up = R.Uploader(Run(str(run)), R.connect(f"file://{tmp_path / 'remote'}"), keep_trainer_states=2)
    up.sync()
    assert up.close(60) == [] and up.error is None
    there = tmp_path / "remote" / "checkpoints" / "step_000001"
    assert (there / "checkpoint.json").is_file() and not (there / TRAINER_STATE).exists()
    assert "warning" not in capsys.readouterr().err


def test_transfers_retry_with_back_off(monkeypatch):
    pauses = []
    monkeypatch.setattr(RS.time, "sleep", pauses.append)

    def failing(times: int, error: Exception):
        calls = []

        def fn():
            calls.append(1)
            if len(calls) <= times:
                raise error
            return "done"
        return fn

    assert R.retry(failing(2, ConnectionError("connection reset")), retries=4, backoff=2.0) == "done"
    assert pauses == [2.0, 4.0]
    with pytest.raises(ConnectionError):
        R.retry(failing(9, ConnectionError("down")), retries=3, backoff=1.0)
    assert pauses[2:] == [1.0, 2.0]  # three attempts, two pauses, then the error
    for final in (PermissionError("denied"), FileNotFoundError("no such bucket")):  # waiting does not fix these
        with pytest.raises(type(final)):
            R.retry(failing(1, final), retries=4, backoff=1.0)
    assert len(pauses) == 4


@pytest.mark.parametrize("below", [False, True])
def test_a_cache_that_is_a_file_is_named_before_any_store(tmp_path, monkeypatch, below):
    # It was blamed on the store ("--model: cannot read URL"), after the download.
    (tmp_path / "cachefile").write_text("mine\n")
    cache = tmp_path / "cachefile" / ("sub" if below else "")
    monkeypatch.setenv("SMOLLM_CACHE", str(cache).rstrip("/"))
    with pytest.raises(R.RemoteError) as e:
        R.fetch_weights(f"file://{tmp_path / 'nowhere'}")
    assert str(e.value) == (f"SMOLLM_CACHE={tmp_path / 'cachefile'} is a file, not a directory; point SMOLLM_CACHE "
                            f"at a directory")
    assert (tmp_path / "cachefile").read_text() == "mine\n"
