import json

import pytest

from smollm.config import PRESETS, ModelConfig, get_preset


def test_preset_parameter_count():
    assert get_preset("smollm2-135m").n_params == 134_515_008


@pytest.mark.parametrize("name,n_params", [("smollm2-135m", 134_515_008), ("smollm2-360m", 361_821_120),
                                           ("smollm2-1.7b", 1_711_376_384)])
def test_family_presets_match_transformers(name, n_params):
    """Each SmolLM2 preset has the published shapes: the same count as transformers' LlamaForCausalLM built
    from a LlamaConfig of the released values, and as our own model (both on the meta device)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from smollm.model import SmolLM

    cfg = get_preset(name)
    hf = LlamaConfig(**{k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        theirs = sum(p.numel() for p in LlamaForCausalLM(hf).parameters())
        ours = sum(p.numel() for p in SmolLM(cfg).parameters())
    assert cfg.n_params == theirs == ours == n_params
    assert hf.tie_word_embeddings and hf.num_key_value_heads == cfg.num_key_value_heads


def test_presets_are_copies():
    cfg = get_preset("tiny")
    cfg.hidden_size = 1
    assert PRESETS["tiny"].hidden_size == 128


def test_unknown_preset():
    with pytest.raises(KeyError, match="unknown model preset 'nope'"):
        get_preset("nope")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_hf_config_round_trip(tmp_path, name):
    cfg = get_preset(name)
    cfg.save(tmp_path)
    assert ModelConfig.load(tmp_path) == cfg


def test_hf_config_loads_in_transformers(tmp_path):
    from transformers import AutoConfig

    cfg = get_preset("smollm2-135m-released")
    cfg.save(tmp_path)
    hf = AutoConfig.from_pretrained(tmp_path)
    assert hf.model_type == "llama" and hf.num_key_value_heads == 3 and hf.tie_word_embeddings
    assert ModelConfig.from_hf_dict(hf.to_dict()) == cfg


def _write(tmp_path, d):
    (tmp_path / "config.json").write_text(json.dumps(d))
    return tmp_path


def test_missing_key_is_named(tmp_path):
    d = get_preset("tiny").to_hf_dict()
    del d["intermediate_size"]
    with pytest.raises(KeyError, match=r"config.json: missing required key 'intermediate_size'"):
        ModelConfig.load(_write(tmp_path, d))


@pytest.mark.parametrize("key,value,msg", [
    ("model_type", "gpt2", "model_type is 'gpt2'"),
    ("hidden_act", "gelu", "hidden_act is 'gelu'"),
    ("tie_word_embeddings", False, "tie_word_embeddings is false"),
    ("num_key_value_heads", 3, r"num_attention_heads \(4\) must be a multiple of num_key_value_heads \(3\)"),
    ("vocab_size", -5, "vocab_size must be a positive integer, got -5"),
])
def test_bad_values_are_named(tmp_path, key, value, msg):
    d = get_preset("tiny").to_hf_dict()
    d[key] = value
    with pytest.raises((ValueError, KeyError), match=msg):
        ModelConfig.load(_write(tmp_path, d))


def test_not_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        ModelConfig.load(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ModelConfig.load(tmp_path)
