import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from smollm.config import get_preset
from smollm.model import SmolLM
from smollm.weights import export_hf, load_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = SmolLM(get_preset("tiny"))
    return model, export_hf(model, tmp_path_factory.mktemp("w") / "tiny")


def test_export_writes_hf_files(tiny_dir):
    _, out = tiny_dir
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors"]
    assert "lm_head.weight" not in load_file(os.path.join(out, "model.safetensors"))  # tied, as HF writes it


@torch.no_grad()
def test_export_round_trip_transformers(tiny_dir):
    from transformers import AutoModelForCausalLM

    model, out = tiny_dir
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(0, 49152, (2, 33))
    torch.testing.assert_close(hf(ids).logits, model.eval()(ids), rtol=0, atol=1e-5)


def test_export_round_trip_ours_bit_for_bit(tiny_dir):
    model, out = tiny_dir
    back = load_model(out)
    assert back.config == model.config
    a, b = model.state_dict(), back.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_export_bf16_keeps_dtype(tmp_path):
    model = SmolLM(get_preset("tiny")).to(torch.bfloat16)
    back = load_model(export_hf(model, tmp_path / "bf16"))
    assert back.model.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(back.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_export_refuses_to_overwrite_then_replaces(tiny_dir, tmp_path):
    model, _ = tiny_dir
    out = export_hf(model, tmp_path / "m")
    with pytest.raises(FileExistsError, match="exists"):
        export_hf(model, out)
    export_hf(model, out, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["m"]  # no temporary leftovers


def _copy(src, dst, edit_config=None, edit_state=None):
    os.makedirs(dst)
    cfg = json.load(open(os.path.join(src, "config.json")))
    state = load_file(os.path.join(src, "model.safetensors"))
    if edit_config:
        edit_config(cfg)
    if edit_state:
        edit_state(state)
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"))
    save_file(state, os.path.join(dst, "model.safetensors"))
    return dst


def test_config_with_wrong_shape(tiny_dir, tmp_path):
    d = _copy(tiny_dir[1], tmp_path / "m", edit_config=lambda c: c.update(intermediate_size=512))
    with pytest.raises(ValueError, match=r"tensor 'model.layers.0.mlp.gate_proj.weight' has shape \(384, 128\), "
                                         r"the config expects \(512, 128\)"):
        load_model(d)


def test_config_missing_key(tiny_dir, tmp_path):
    d = _copy(tiny_dir[1], tmp_path / "m", edit_config=lambda c: c.pop("num_hidden_layers"))
    with pytest.raises(KeyError, match="config.json: missing required key 'num_hidden_layers'"):
        load_model(d)


def test_safetensors_missing_tensor(tiny_dir, tmp_path):
    d = _copy(tiny_dir[1], tmp_path / "m", edit_state=lambda s: s.pop("model.layers.2.self_attn.k_proj.weight"))
    with pytest.raises(KeyError, match="missing tensor 'model.layers.2.self_attn.k_proj.weight'"):
        load_model(d)


def test_safetensors_unexpected_tensor(tiny_dir, tmp_path):
    d = _copy(tiny_dir[1], tmp_path / "m", edit_state=lambda s: s.update({"model.layers.9.mlp.up_proj.weight": torch.zeros(2)}))
    with pytest.raises(KeyError, match="unexpected tensor 'model.layers.9.mlp.up_proj.weight'"):
        load_model(d)


def test_untied_head_is_refused(tiny_dir, tmp_path):
    d = _copy(tiny_dir[1], tmp_path / "m",
              edit_state=lambda s: s.update({"lm_head.weight": torch.zeros_like(s["model.embed_tokens.weight"])}))
    with pytest.raises(ValueError, match="lm_head.weight differs from model.embed_tokens.weight"):
        load_model(d)


def test_no_safetensors(tmp_path):
    get_preset("tiny").save(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_model(tmp_path)


def test_corrupt_safetensors(tiny_dir, tmp_path):
    d = _copy(tiny_dir[1], tmp_path / "m")
    (d / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        load_model(d)


def test_gguf_that_is_not_llama(tmp_path):
    import gguf

    path = str(tmp_path / "gpt2.gguf")
    w = gguf.GGUFWriter(path, arch="gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="GGUF architecture is 'gpt2', expected 'llama'"):
        load_model(path)


def test_not_a_gguf(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="junk.gguf: not a readable GGUF file"):
        load_model(path)


def test_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_model(tmp_path / "nothing-here")
    assert str(e.value) == f"model {tmp_path / 'nothing-here'}: no such file or directory"


def test_unreachable_hub_id():
    """Offline (or an unknown repository): first that no such path exists, then what the Hub said."""
    with pytest.raises(OSError, match=r"^model HuggingFaceTB/definitely-not-a-repo: no such file or directory "
                                      r"here; as a Hub id it failed: \w+: "):
        load_model("HuggingFaceTB/definitely-not-a-repo")


def test_gguf_loads_real_smollm2(ours_golden):
    cfg = ours_golden.config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.rope_theta) == (49152, 576, 30, 100000.0)
    assert ours_golden.num_params() == 134_515_008


def _llama_cpp_permute(w, n_head):
    # What llama.cpp's converter does to q/k rows (the reference for our inverse).
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


@pytest.mark.parametrize("n_head,head_dim", [(9, 64), (3, 64), (2, 8)])
def test_unpermute_qk_inverts_llama_cpp(n_head, head_dim):
    from smollm.weights import unpermute_qk

    w = torch.randn(n_head * head_dim, 12)
    assert torch.equal(unpermute_qk(_llama_cpp_permute(w, n_head), n_head), w)


def test_our_gguf_reader_matches_transformers(ours_golden, hf_golden):
    ours, theirs = ours_golden.state_dict(), hf_golden.state_dict()
    assert list(ours) == list(theirs)
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
