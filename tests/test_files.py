"""smollm/files.py: atomic file and directory writes (checked by making them fail part way: the old
contents must survive and no temporary must be left beside them) and is_hub_id."""

import json
import os

import pytest

from smollm import files
from smollm.files import (SourceNotFound, atomic_dir, atomic_path, atomic_write_bytes, atomic_write_json, is_hub_id,
                          looks_like_path, read_jsonl)


class Boom(Exception):
    pass


def _chunks_then_fail(n_ok):
    """Chunks of a write that fails after n_ok of them have gone into the temporary file."""
    for i in range(n_ok):
        yield f"new {i}\n".encode()
    raise Boom("disk on fire")


def _mode(path):
    return os.stat(path).st_mode & 0o777


def test_atomic_write_bytes_replaces_the_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    atomic_write_bytes(str(path), [b"new ", b"contents"])
    assert path.read_bytes() == b"new contents"
    assert os.listdir(tmp_path) == ["f.bin"]
    assert _mode(path) == 0o644  # mkstemp's 0600 would hide shards from other users


@pytest.mark.parametrize("n_ok", [0, 3])
def test_atomic_write_bytes_failing_part_way_keeps_the_old_file(tmp_path, n_ok):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(Boom):
        atomic_write_bytes(str(path), _chunks_then_fail(n_ok))
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_atomic_write_bytes_failing_part_way_creates_nothing(tmp_path):
    with pytest.raises(Boom):
        atomic_write_bytes(str(tmp_path / "f.bin"), _chunks_then_fail(2))
    assert os.listdir(tmp_path) == []


def test_meta_json_is_written_atomically(tmp_path, monkeypatch):
    """meta.json (prepare's commit point) is the old one or the whole new one: a failure after the
    new contents are written, before the rename, leaves the old one and no temporary."""
    path = tmp_path / "meta.json"
    atomic_write_json(str(path), {"docs_done": 1})
    assert json.loads(path.read_text()) == {"docs_done": 1}
    assert os.listdir(tmp_path) == ["meta.json"] and _mode(path) == 0o644

    written = []

    def fsync_then_fail(tmp):
        written.append(open(tmp).read())
        raise Boom("power cut")

    monkeypatch.setattr(files, "_fsync_file", fsync_then_fail)
    with pytest.raises(Boom):
        atomic_write_json(str(path), {"docs_done": 2})
    assert json.loads(written[0]) == {"docs_done": 2}  # the failure came after the whole write
    assert json.loads(path.read_text()) == {"docs_done": 1}
    assert os.listdir(tmp_path) == ["meta.json"]


def test_atomic_path_renames_on_success(tmp_path):
    out = tmp_path / "loss.png"
    with atomic_path(str(out), suffix=".png") as tmp:
        # A temporary beside the destination (one filesystem: the rename is atomic), with the suffix
        # that writers such as savefig read the format from.
        assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith(".png") and tmp != str(out)
        assert not out.exists()
        with open(tmp, "w") as f:
            f.write("figure")
    assert out.read_text() == "figure" and _mode(out) == 0o644
    assert os.listdir(tmp_path) == ["loss.png"]


def test_atomic_path_failing_keeps_the_old_file(tmp_path):
    out = tmp_path / "loss.png"
    out.write_text("old figure")
    with pytest.raises(Boom):
        with atomic_path(str(out), suffix=".png") as tmp:
            with open(tmp, "w") as f:
                f.write("half a fig")
            raise Boom("savefig failed")
    assert out.read_text() == "old figure"
    assert os.listdir(tmp_path) == ["loss.png"]


def _fill(directory, names):
    for name in names:
        with open(os.path.join(directory, name), "w") as f:
            f.write(name)


def _tree(directory):
    return {name: open(os.path.join(directory, name)).read() for name in sorted(os.listdir(directory))}


def test_atomic_dir_creates_the_directory(tmp_path):
    out = tmp_path / "parent" / "ckpt"  # missing parents are made
    with atomic_dir(str(out)) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path / "parent") and not out.exists()
        _fill(tmp, ["a", "b"])
    assert _tree(out) == {"a": "a", "b": "b"} and _mode(out) == 0o755
    assert os.listdir(tmp_path / "parent") == ["ckpt"]


def test_atomic_dir_refuses_an_existing_directory_without_overwrite(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    _fill(out, ["old"])
    with pytest.raises(FileExistsError, match="pass overwrite to replace it"):
        with atomic_dir(str(out)):
            pytest.fail("the body must not run")
    assert _tree(out) == {"old": "old"}
    assert os.listdir(tmp_path) == ["ckpt"]


def test_atomic_dir_overwrite_replaces_the_whole_directory(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    _fill(out, ["old", "shared"])
    with atomic_dir(str(out), overwrite=True) as tmp:
        _fill(tmp, ["shared", "new"])
        assert _tree(out) == {"old": "old", "shared": "shared"}  # untouched until the body is done
    assert _tree(out) == {"new": "new", "shared": "shared"}  # no file of the old one is left
    assert os.listdir(tmp_path) == ["ckpt"]  # neither the new one's temporary nor the old one's


@pytest.mark.parametrize("overwrite", [False, True])
def test_atomic_dir_failing_keeps_the_old_directory(tmp_path, overwrite):
    out = tmp_path / "ckpt"
    if overwrite:
        out.mkdir()
        _fill(out, ["old"])
    with pytest.raises(Boom):
        with atomic_dir(str(out), overwrite=overwrite) as tmp:
            _fill(tmp, ["half"])
            raise Boom("killed mid-save")
    assert os.listdir(tmp_path) == (["ckpt"] if overwrite else [])
    if overwrite:
        assert _tree(out) == {"old": "old"}


@pytest.mark.parametrize("name, hub", [
    ("HuggingFaceTB/SmolLM2-135M", True),
    ("someone/no-such-tokenizer", True),
    ("./x", False),
    ("/abs/path", False),
    ("~/models/x", False),
    ("a/b/c", False),
    ("x.gguf", False),
    ("owner/model.gguf", False),
    ("owner/tokenizer.json", False),
    ("owner/model.safetensors", False),
    ("runs/tiny", False),  # a run directory (log.out_dir's runs/NAME), mistyped or elsewhere: never the Hub
    ("SmolLM2-135M", False),
])
def test_is_hub_id(name, hub):
    assert is_hub_id(name) is hub


def test_an_existing_local_directory_is_not_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_hub_id("a/b")  # the same string, nothing on disk
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert not is_hub_id("a/b")


def test_a_name_below_an_existing_directory_is_a_path(tmp_path, monkeypatch):
    """models/SmolLM2 where models/ exists here is a (mistyped) path, not a hub id owned by "models"."""
    monkeypatch.chdir(tmp_path)
    assert is_hub_id("models/SmolLM2") and not looks_like_path("models/SmolLM2")
    (tmp_path / "models").mkdir()
    assert looks_like_path("models/SmolLM2") and not is_hub_id("models/SmolLM2")


@pytest.mark.parametrize("name", ["./x", "../x", "/abs/x", "~/x", "x.gguf", "a/model.safetensors", "runs/nope", ".",
                                  "runs/x/checkpoints/step_000001"])
def test_looks_like_path(name):
    assert looks_like_path(name)


@pytest.mark.parametrize("name", ["HuggingFaceTB/SmolLM2-135M", "SmolLM2-135M", "owner/repo"])
def test_does_not_look_like_a_path(name):
    assert not looks_like_path(name)


def test_a_missing_source_says_first_that_no_such_path_exists():
    assert str(SourceNotFound("runs/nope")) == "model runs/nope: no such file or directory"
    hub = SourceNotFound("someone/nope", hub_said="LocalEntryNotFoundError: Got: ConnectError: offline")
    assert str(hub) == ("model someone/nope: no such file or directory here; as a Hub id it failed: "
                        "LocalEntryNotFoundError: Got: ConnectError: offline")
    assert hub.describe("--model").startswith("--model someone/nope: no such file or directory here; ")
    assert str(SourceNotFound("SmolLM2-135M", label="tokenizer")) == (
        "tokenizer SmolLM2-135M: no such file or directory here, and not a Hub id (those read owner/name, e.g. "
        "HuggingFaceTB/SmolLM2-135M)")
    assert isinstance(hub, FileNotFoundError)  # what callers catch, as before


def test_read_jsonl(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert read_jsonl(str(path)) == []  # not written yet
    path.write_text('{"step": 1}\n\n{"step": 2}\n')
    assert read_jsonl(str(path)) == [{"step": 1}, {"step": 2}]
