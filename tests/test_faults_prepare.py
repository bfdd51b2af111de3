"""Faults of `python -m smollm.prepare`: each ends in one clear line, and nothing committed is lost."""

import json
import multiprocessing as mp
import multiprocessing.pool
import os

import numpy as np
import pytest

from smollm.files import atomic_write_json
from smollm.cli.prepare import main
from smollm.prepare.shards import new_meta
from smollm.prepare.worker import is_val
from test_prepare import DOCS, _expected, _jsonl, _run, _stream


def _files(directory):
    return {n: (directory / n).read_bytes() for n in sorted(os.listdir(directory))}


# ------------------------------------------------------------- 1. stopping the workers --

def test_budget_stop_never_terminates_workers_mid_result(tmp_path, tokenizer, monkeypatch):
    def terminate(self):
        raise AssertionError("pool.terminate() can deadlock when a worker is killed mid-result")

    monkeypatch.setattr(multiprocessing.pool.Pool, "terminate", terminate)
    src = [_jsonl(tmp_path / "a.jsonl", DOCS)]
    meta = _run(src, tmp_path / "ds", tokenizer, max_tokens=500)
    assert meta["complete"] and 500 <= meta["tokens"]["train"] + meta["tokens"]["val"] < 700
    assert not mp.active_children()  # every worker joined
    want = _expected(tokenizer, DOCS, 0.2)
    for split in ("train", "val"):  # the last, partial shard is there: a prefix of the whole stream
        got = _stream(str(tmp_path / "ds"), split)
        assert len(got) == meta["tokens"][split]
        np.testing.assert_array_equal(got, want[split][:len(got)])


def test_a_failing_source_stops_the_workers_too(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(multiprocessing.pool.Pool, "terminate", lambda self: pytest.fail("terminate() called"))
    path = tmp_path / "a.jsonl"
    _jsonl(path, DOCS)
    with open(path, "a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match=r"a.jsonl:124: not valid JSON"):
        _run([str(path)], tmp_path / "ds", tokenizer)
    assert not mp.active_children()


# ------------------------------------------------------ 2. killed during the first shard --

def test_directory_with_only_leftover_tmp_files_is_resumed(tmp_path, tokenizer):
    src = [_jsonl(tmp_path / "a.jsonl", DOCS)]
    _run(src, tmp_path / "whole", tokenizer)
    (tmp_path / "ds").mkdir()  # killed between creating --out and its first meta.json: half a shard
    (tmp_path / "ds" / ".tmp-k1ll3d").write_bytes(b"\0" * 100)
    _run(src, tmp_path / "ds", tokenizer)
    assert _files(tmp_path / "ds").keys() == _files(tmp_path / "whole").keys()  # the .tmp- file is gone
    for split in ("train", "val"):
        np.testing.assert_array_equal(_stream(str(tmp_path / "ds"), split), _stream(str(tmp_path / "whole"), split))


def test_killed_before_its_first_commit_resumes(tmp_path, tokenizer):
    src = [_jsonl(tmp_path / "a.jsonl", DOCS)]
    _run(src, tmp_path / "whole", tokenizer)
    (tmp_path / "ds").mkdir()  # the state a kill during the first shard leaves: meta.json of no commit
    atomic_write_json(str(tmp_path / "ds" / "meta.json"), new_meta(tokenizer, None, src, 0.2, 300))
    (tmp_path / "ds" / ".tmp-abc123").write_bytes(b"half a shard")
    _run(src, tmp_path / "ds", tokenizer)
    whole, ds = (json.loads((tmp_path / d / "meta.json").read_text()) for d in ("whole", "ds"))
    assert ds["complete"] and ds["shards"] == whole["shards"] and ds["docs_done"] == len(DOCS)
    assert not [n for n in os.listdir(tmp_path / "ds") if n.startswith(".tmp-")]


def test_leftover_tmp_files_are_removed_on_resume(tmp_path, tokenizer):
    src = [_jsonl(tmp_path / "a.jsonl", DOCS)]
    _run(src, tmp_path / "ds", tokenizer, max_commits=2)
    (tmp_path / "ds" / ".tmp-half").write_bytes(b"x")
    meta = _run(src, tmp_path / "ds", tokenizer)
    assert meta["complete"] and not (tmp_path / "ds" / ".tmp-half").exists()


def test_a_foreign_file_still_refuses(tmp_path, tokenizer):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / ".tmp-x").write_bytes(b"x")
    (tmp_path / "ds" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="ds is not empty and has no meta.json"):
        _run([_jsonl(tmp_path / "a.jsonl", DOCS[:3])], tmp_path / "ds", tokenizer)
    assert sorted(os.listdir(tmp_path / "ds")) == [".tmp-x", "notes.txt"]  # nothing touched


# ------------------------------------------------------------------- 3. invalid UTF-8 --

def test_txt_with_invalid_utf8_names_file_and_line(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text(DOCS[0], encoding="utf-8")
    (tmp_path / "b.txt").write_bytes(b"first line\ncaf\xe9 au lait\n")
    with pytest.raises(ValueError, match=r"b.txt:2: not valid UTF-8 \(byte 0xe9\); re-encode"):
        _run([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], tmp_path / "ds", tokenizer)
    assert not (tmp_path / "ds").exists()  # nothing committed: the directory it made is gone


def test_jsonl_with_invalid_utf8_keeps_what_was_committed(tmp_path, tokenizer):
    good = _jsonl(tmp_path / "good.jsonl", DOCS)
    _run([good], tmp_path / "whole", tokenizer)
    bad = tmp_path / "a.jsonl"
    lines = open(good, "rb").read().splitlines(keepends=True)
    clean_line = lines[100]
    lines[100] = lines[100].replace(b"Document", b"Docum\xffnt")
    bad.write_bytes(b"".join(lines))
    with pytest.raises(ValueError, match=r"a.jsonl:101:\d+: not valid UTF-8 \(byte 0xff\)"):
        _run([str(bad)], tmp_path / "ds", tokenizer)
    partial = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert partial["shards"] and not partial["complete"]  # the commits before the bad line are kept
    lines[100] = clean_line
    bad.write_bytes(b"".join(lines))  # fixed: the rerun resumes and ends where a clean run does
    _run([str(bad)], tmp_path / "ds", tokenizer)
    for split in ("train", "val"):
        np.testing.assert_array_equal(_stream(str(tmp_path / "ds"), split), _stream(str(tmp_path / "whole"), split))


# ----------------------------------------------- 4. a finished dataset, other arguments --

def test_finished_dataset_rerun_with_other_tokens_refuses(tmp_path, tokenizer):
    src = [_jsonl(tmp_path / "a.jsonl", DOCS)]
    meta = _run(src, tmp_path / "ds", tokenizer, max_tokens=500)
    before = _files(tmp_path / "ds")
    assert _run(src, tmp_path / "ds", tokenizer, max_tokens=500) == meta  # same arguments: returned as it is
    with pytest.raises(ValueError, match=r"ds holds a finished dataset made with --tokens 500 \(asked: 800\); "
                                         r"rerun with its values to use it, or choose another --out"):
        _run(src, tmp_path / "ds", tokenizer, max_tokens=800)
    with pytest.raises(ValueError, match=r"--tokens 500 \(asked: all \(the whole source\)\)"):
        _run(src, tmp_path / "ds", tokenizer)
    with pytest.raises(ValueError, match=r"made with --val-fraction 0.2 \(asked: 0.1\)"):
        _run(src, tmp_path / "ds", tokenizer, max_tokens=500, val_fraction=0.1)
    assert _files(tmp_path / "ds") == before


def test_partial_dataset_resumes_with_a_new_budget_but_not_a_new_val_fraction(tmp_path, tokenizer):
    src = [_jsonl(tmp_path / "a.jsonl", DOCS)]
    _run(src, tmp_path / "ds", tokenizer, max_commits=2)
    before = _files(tmp_path / "ds")
    with pytest.raises(ValueError, match=r"holds a partial dataset made with --val-fraction 0.2 \(asked: 0.3\); "
                                         r"rerun with its values to resume it"):
        _run(src, tmp_path / "ds", tokenizer, val_fraction=0.3)
    assert _files(tmp_path / "ds") == before
    meta = _run(src, tmp_path / "ds", tokenizer, max_tokens=1500)  # the budget is a total: it may change
    assert meta["complete"] and meta["max_tokens"] == 1500


# ------------------------------------------------- 5. the command line: one line, exit 2 --

@pytest.fixture
def cli(tmp_path, tokenizer, monkeypatch, capsys):
    monkeypatch.setattr("smollm.tokenizer.load_tokenizer", lambda name=None: tokenizer)

    def run(*args, out=None):
        out = out or tmp_path / "new" / "ds"
        rc = main(["--out", str(out), "--workers", "2", *args])
        return rc, capsys.readouterr()
    return run


def _one_line_error(rc, captured, message):
    assert rc == 2, captured
    lines = [line for line in captured.err.replace("\r", "\n").split("\n") if line.strip()]
    errors = [line for line in lines if line.startswith("prepare: error: ")]  # (the rest: the progress bar)
    assert len(errors) == 1 and lines[-1] == errors[0] and captured.err.endswith("\n"), captured.err
    assert message in errors[0] and "Traceback" not in captured.err


@pytest.mark.parametrize("args, message", [
    (["--tokens", "lots"], "--tokens: not a count: 'lots' (use e.g. 1.2B, 500M, 10k)"),
    (["--tokens", "0"], "--tokens must be at least 1, got '0'"),
    (["--shard-tokens", "-5"], "--shard-tokens must be at least 1, got '-5'"),
    (["--workers", "0"], "--workers must be at least 1, got 0"),
    (["--threads", "many"], "argument --threads: invalid int value: 'many'"),
    (["--val-fraction", "1.5"], "--val-fraction must be in [0, 1), got 1.5"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_arguments(cli, tmp_path, args, message):
    _one_line_error(*cli(*args), message)
    assert not (tmp_path / "new").exists()


def test_missing_source_glob(cli, tmp_path):
    _one_line_error(*cli("--source", str(tmp_path / "nothing*.jsonl")), "nothing*.jsonl' matches no file")
    assert not (tmp_path / "new").exists()  # the directories it made are removed again


def test_unknown_source_kind(cli, tmp_path):
    (tmp_path / "a.csv").write_text("x")
    _one_line_error(*cli("--source", str(tmp_path / "a.csv")), "a.csv: unsupported file type (txt, jsonl or parquet)")
    assert not (tmp_path / "new").exists()


def test_unreadable_file(cli, tmp_path, monkeypatch):
    path = _jsonl(tmp_path / "a.jsonl", DOCS)

    def denied(name, *args, **kw):
        if os.fspath(name) == path:
            raise PermissionError(13, "Permission denied", path)
        return open(name, *args, **kw)

    monkeypatch.setattr("smollm.prepare.sources.open", denied, raising=False)
    _one_line_error(*cli("--source", path), f"{path}: Permission denied")
    assert not (tmp_path / "new").exists()


def test_invalid_utf8_on_the_command_line(cli, tmp_path):
    (tmp_path / "b.txt").write_bytes(b"\xff\xfeh\0i\0")  # UTF-16
    _one_line_error(*cli("--source", str(tmp_path / "b.txt")), "b.txt:1: not valid UTF-8 (byte 0xff)")
    assert not (tmp_path / "new").exists()


def test_the_summary_says_the_text_policy(cli, tmp_path):
    rc, captured = cli("--source", _jsonl(tmp_path / "a.jsonl", DOCS))
    assert rc == 0
    assert captured.out.splitlines()[-1] == ("text: read as UTF-8; a local file with invalid UTF-8 stops the run, "
                                             "naming file and line")


def test_a_corpus_too_small_for_a_validation_split_is_told(cli, tmp_path):
    docs = [d for d in DOCS[:20] if d.strip() and not is_val(d, 0.01)]
    rc, captured = cli("--source", _jsonl(tmp_path / "a.jsonl", docs))
    assert rc == 0 and (f"note: no validation documents at --val-fraction 0.01 (each document is one with that "
                        f"chance); train.py will run without a validation loss: raise --val-fraction for a corpus "
                        f"of {len(docs)} documents") in captured.out.splitlines()
    rc, captured = cli("--source", _jsonl(tmp_path / "a.jsonl", docs), "--val-fraction", "0",
                       out=tmp_path / "no_val")  # asked for none: nothing to tell
    assert rc == 0 and "note:" not in captured.out


def test_existing_empty_out_is_left_as_it_was(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    _one_line_error(*cli("--source", str(_jsonl(tmp_path / "e.jsonl", [])), out=tmp_path / "empty"),
                    "has no documents with text")
    assert os.listdir(tmp_path / "empty") == []  # its meta.json removed, the directory it did not make kept


def test_success_prints_a_summary(cli, tmp_path):
    rc, captured = cli("--source", _jsonl(tmp_path / "a.jsonl", DOCS), "--shard-tokens", "300")
    assert rc == 0 and "train tokens" in captured.out and "error" not in captured.err


# ------------------------------------------------------------- round 3: a short last shard --

def test_a_dataset_whose_last_shard_is_short_trains(tmp_path, tokenizer):
    """prepare said "complete", then train refused the whole dataset because its last shard was shorter
    than one window. Now they agree: the short shard has no windows, the others all of theirs."""
    from smollm.data import TokenWindows, shard_paths, open_shard

    meta = _run([_jsonl(tmp_path / "a.jsonl", DOCS)], tmp_path / "ds", tokenizer)
    assert meta["complete"]
    sizes = [open_shard(p).size for p in shard_paths(str(tmp_path / "ds"), "train")]
    seq_len = sizes[-1]  # the last shard is then shorter than one window of seq_len + 1
    assert len(sizes) > 2 and all(n > seq_len for n in sizes[:-1]), sizes
    w = TokenWindows(str(tmp_path / "ds"), "train", seq_len)
    assert w.n_windows == sum(n - seq_len for n in sizes[:-1])
    assert w.get_batch_numpy(seed=0, step=0, batch_size=4).shape == (4, seq_len + 1)


# ------------------------------------------------------------- round 3: a worker killed from outside --

KILLED_WORKER = """
import json, os, sys, time
import smollm.prepare.pool as P
import smollm.prepare.worker as W
from smollm.cli.prepare import main
real = W.encode_batch
def slow(batch, val_fraction):
    open(os.path.join(sys.argv[1], f"busy-{os.getpid()}"), "w").close()
    time.sleep(0.3)
    return real(batch, val_fraction)
P.encode_batch = slow
sys.exit(main(json.loads(sys.argv[2])))
"""


def test_a_killed_worker_stops_prepare_with_one_line_and_it_resumes(tmp_path, gguf_path):
    import signal
    import subprocess
    import sys
    import time

    src = _jsonl(tmp_path / "a.jsonl", DOCS * 4)
    args = ["--source", src, "--out", str(tmp_path / "ds"), "--tokenizer", gguf_path, "--shard-tokens", "2000",
            "--val-fraction", "0.2", "--workers", "2"]
    marks = tmp_path / "marks"
    marks.mkdir()
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WORKER, str(marks), json.dumps(args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not os.listdir(marks):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.02)
        os.kill(int(sorted(os.listdir(marks))[0].split("-")[1]), signal.SIGKILL)  # a worker, mid-batch
        _, err = proc.communicate(timeout=120)  # it hung here for good
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2
    assert err.strip().splitlines()[-1].startswith("prepare: error: a tokenizer worker (pid ")
    assert err.strip().splitlines()[-1].endswith("died with a batch in flight (killed from outside, or out of "
                                                 "memory); the shards committed so far are kept: run the same "
                                                 "command again to resume")
    assert main(args) == 0  # resumed from its last commit
    assert main(args[:2] + ["--out", str(tmp_path / "whole")] + args[4:]) == 0
    for split in ("train", "val"):
        np.testing.assert_array_equal(_stream(str(tmp_path / "ds"), split), _stream(str(tmp_path / "whole"), split))


@pytest.mark.parametrize("row, line", [
    ("null", "a JSON null (null), not an object with a 'text' column"),
    ("5", "a JSON number (5), not an object with a 'text' column"),
    ('"just a string"', "a JSON string (\"just a string\"), not an object with a 'text' column"),
    ('{"text": null}', "column 'text' is null, not text"),
    ('{"text": 12}', "column 'text' is number 12, not text"),
    ('{"text": ["a"]}', "column 'text' is array [\"a\"], not text"),
])
def test_a_corpus_row_that_is_not_a_document_names_file_and_line(tmp_path, tokenizer, row, line):
    path = tmp_path / "a.jsonl"
    _jsonl(path, DOCS[:3])
    with open(path, "a") as f:
        f.write(row + "\n")
    with pytest.raises(ValueError) as e:
        _run([str(path)], tmp_path / "ds", tokenizer)
    assert str(e.value).startswith(f"{path}:4: {line}"), str(e.value)
    assert not mp.active_children()


def test_a_parquet_null_document_names_file_and_row(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["one doc", "two doc", None]}), path)
    with pytest.raises(ValueError) as e:
        _run([str(path)], tmp_path / "ds", tokenizer)
    assert str(e.value) == f"{path}: row 3: column 'text' is null, not text"
