import pytest
import torch
import torch.nn.functional as F

from smollm.config import get_preset
from smollm.model import SmolLM

from conftest import PROMPTS


def test_parameter_count_and_hf_keys():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = get_preset("smollm2-135m")
    ours = SmolLM(cfg)
    assert ours.num_params() == 134_515_008
    hf = LlamaForCausalLM(LlamaConfig(**cfg.to_hf_dict()))
    ours_sd, hf_sd = ours.state_dict(), hf.state_dict()
    assert list(ours_sd) == list(hf_sd)
    assert {k: tuple(v.shape) for k, v in ours_sd.items()} == {k: tuple(v.shape) for k, v in hf_sd.items()}
    assert ours.lm_head.weight is ours.model.embed_tokens.weight


def test_init_std():
    torch.manual_seed(0)
    m = SmolLM(get_preset("smollm2-135m"))
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                 "model.layers.29.mlp.down_proj.weight"):
        w = m.get_parameter(name)
        assert abs(w.std().item() - 0.041666) < 1e-3, name
        assert abs(w.mean().item()) < 1e-3, name
    assert torch.equal(m.model.norm.weight, torch.ones(576))


def test_loss_ignores_minus_100():
    torch.manual_seed(0)
    m = SmolLM(get_preset("tiny"))
    ids = torch.randint(0, 49152, (2, 16))
    targets = torch.randint(0, 49152, (2, 16))
    targets[0, :5] = -100
    logits = m(ids)  # (B, T, V)
    keep = targets != -100
    want = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(m(ids, targets), want, rtol=0, atol=1e-6)


def test_too_long_is_refused():
    m = SmolLM(get_preset("tiny"))
    with pytest.raises(ValueError, match="sequence length 513 exceeds max_position_embeddings 512"):
        m(torch.zeros(1, 513, dtype=torch.long))


def test_bad_kernels_choice():
    with pytest.raises(ValueError, match="kernels must be one of"):
        SmolLM(get_preset("tiny"), kernels="cuda")


@torch.no_grad()
@pytest.mark.parametrize("prompt", PROMPTS)
def test_golden_parity_with_transformers(prompt, tokenizer, hf_golden, ours_golden):
    """Real SmolLM2-135M-Instruct weights, fp32: our model against transformers' LlamaForCausalLM."""
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])  # (1, T)
    want = hf_golden(ids).logits  # (1, T, V)
    got = ours_golden(ids)
    assert (got - want).abs().max().item() < 1e-4
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    want_loss = F.cross_entropy(want[0, :-1], ids[0, 1:])
    got_loss = ours_golden(ids[:, :-1], ids[:, 1:])
    assert abs(got_loss.item() - want_loss.item()) < 1e-5


@torch.no_grad()
def test_golden_parity_batched(tokenizer, hf_golden, ours_golden):
    rows = tokenizer(["The quick brown fox jumps over", "import numpy as np\nx = np.arange(10)"])["input_ids"]
    T = min(map(len, rows))
    ids = torch.tensor([r[:T] for r in rows])  # (2, T)
    torch.testing.assert_close(ours_golden(ids), hf_golden(ids).logits, rtol=0, atol=1e-4)
