import pytest
import torch
import torch.nn.functional as F

from smollm.config import get_preset
from smollm.model import SmolLM

from conftest import DEVICE, PROMPTS


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
    state = m.state_dict()
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                 "model.layers.0.self_attn.v_proj.weight", "model.layers.29.mlp.up_proj.weight",
                 "model.layers.29.mlp.down_proj.weight"):
        w = state[name]
        assert abs(w.std().item() - 0.041666) < 1e-3, name
        assert abs(w.mean().item()) < 1e-3, name
    assert torch.equal(m.model.norm.weight, torch.ones(576))


def test_loss_ignores_minus_100():
    torch.manual_seed(0)
    m = SmolLM(get_preset("tiny"))
    ids = torch.randint(0, 49152, (2, 16), device=DEVICE)
    targets = torch.randint(0, 49152, (2, 16), device=DEVICE)
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


def _twins(preset="tiny", seed=0):
    torch.manual_seed(seed)
    ref = SmolLM(get_preset(preset), kernels="torch").to(DEVICE)
    fused = SmolLM(get_preset(preset), kernels="triton").to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _loss_and_grads(model, ids, targets):
    model.zero_grad(set_to_none=True)
    loss = model(ids, targets)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


# The Triton forward kernels behind the model's four fused ops and its loss: (module, kernel).
TRITON_KERNELS = [("smollm.kernels.rmsnorm", "_rms_norm_fwd"), ("smollm.kernels.rope", "_rope_kernel"),
                  ("smollm.kernels.swiglu", "_swiglu_fwd"), ("smollm.kernels.cross_entropy", "_ce_rows")]


def _count_launches(monkeypatch) -> dict[str, int]:
    """Counts the launches of each kernel in TRITON_KERNELS (each still runs): evidence that a forward
    took the Triton path, where the numbers alone cannot tell (both paths agree within tolerance)."""
    import importlib

    counts = {}
    for module_name, name in TRITON_KERNELS:
        module = importlib.import_module(module_name)
        counts[name] = 0

        class Counting:
            def __getitem__(self, grid, kernel=getattr(module, name), name=name):
                counts[name] += 1
                return kernel[grid]

        monkeypatch.setattr(module, name, Counting())
    return counts


def test_triton_path_matches_torch_path(monkeypatch):
    """Small preset, fp32: same loss (1e-5) and the same gradient for every parameter (1e-4 of
    that gradient's largest value)."""
    launches = _count_launches(monkeypatch)
    ref, fused = _twins()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 49152, (2, 48), generator=g).to(DEVICE)
    targets = torch.randint(0, 49152, (2, 48), generator=g).to(DEVICE)
    targets[1, :7] = -100
    loss_ref, grads_ref = _loss_and_grads(ref, ids, targets)
    assert not any(launches.values()), launches
    loss, grads = _loss_and_grads(fused, ids, targets)
    assert all(launches.values()), launches
    assert abs(loss.item() - loss_ref.item()) < 1e-5
    assert list(grads) == list(grads_ref)
    for name, want in grads_ref.items():
        err = (grads[name] - want).abs().max().item()
        assert err <= 1e-4 * want.abs().max().item(), f"{name}: {err:.3g}"


def test_set_kernels_switches_every_module(monkeypatch):
    """set_kernels("triton") gives every module that holds ops (each norm, attention and MLP, and the
    model itself, for the loss) the Triton functions, and a forward then launches the Triton kernels
    once per use; set_kernels("torch") gives back the references, and a forward launches none."""
    import dataclasses

    from smollm.kernels import cross_entropy, rmsnorm, rope, swiglu
    from smollm.model import MLP, Attention, RMSNorm

    torch_ops = {"rms_norm": rmsnorm.rms_norm_reference, "add_rms_norm": rmsnorm.add_rms_norm_reference,
                 "rope": rope.rope_reference, "swiglu": swiglu.swiglu_packed_reference,
                 "linear_cross_entropy": cross_entropy.linear_cross_entropy_reference}
    triton_ops = {"rms_norm": rmsnorm.rms_norm, "add_rms_norm": rmsnorm.add_rms_norm, "rope": rope.rope,
                  "swiglu": swiglu.swiglu_packed, "linear_cross_entropy": cross_entropy.linear_cross_entropy}
    L = 2
    torch.manual_seed(0)
    model = SmolLM(dataclasses.replace(get_preset("tiny"), num_hidden_layers=L), kernels="torch").to(DEVICE)
    holders = [m for m in model.modules() if hasattr(m, "ops")]
    assert {type(m) for m in holders} == {SmolLM, RMSNorm, Attention, MLP} and len(holders) == 4 * L + 2
    ids = torch.randint(0, 49152, (2, 8), device=DEVICE)
    launches = _count_launches(monkeypatch)

    def forward_launches():
        launches.update(dict.fromkeys(launches, 0))
        with torch.no_grad():
            model(ids, ids)  # with targets: the loss op runs too
        return dict(launches)

    none = dict.fromkeys(launches, 0)
    assert forward_launches() == none
    for kernels, ops, want in [("triton", triton_ops, {"_rms_norm_fwd": 2 * L + 1, "_rope_kernel": L,
                                                        "_swiglu_fwd": L, "_ce_rows": 1}),
                               ("torch", torch_ops, none)]:
        assert model.set_kernels(kernels) is model and model.kernels == kernels
        for m in holders:
            assert vars(m.ops) == ops, f"{type(m).__name__} kept {vars(m.ops)}"
        assert forward_launches() == want, kernels


@torch.no_grad()
def test_triton_path_on_real_weights(tokenizer, ours_golden, hf_golden, monkeypatch):
    ids = torch.tensor([tokenizer(PROMPTS[1])["input_ids"]])
    want = hf_golden(ids).logits
    launches = _count_launches(monkeypatch)
    ours_golden.set_kernels("triton")
    try:
        got = ours_golden(ids)
        loss = ours_golden(ids[:, :-1], ids[:, 1:])
    finally:
        ours_golden.set_kernels("torch")
    assert all(launches.values()), launches
    assert (got - want).abs().max().item() < 1e-4
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert abs(loss.item() - F.cross_entropy(want[0, :-1], ids[0, 1:]).item()) < 1e-5


def test_compile_fullgraph_triton_path(monkeypatch):
    """torch.compile(fullgraph=True) takes the custom ops without a graph break, forward and backward."""
    ref, fused = _twins()
    ids = torch.randint(0, 49152, (2, 16), device=DEVICE)
    targets = torch.randint(0, 49152, (2, 16), device=DEVICE)
    loss_ref, grads_ref = _loss_and_grads(ref, ids, targets)
    torch._dynamo.reset()
    compiled = torch.compile(fused, fullgraph=True)
    fused.zero_grad(set_to_none=True)
    launches = _count_launches(monkeypatch)
    loss = compiled(ids, targets)
    loss.backward()
    assert all(launches.values()), launches  # the compiled graph runs the Triton kernels
    assert abs(loss.item() - loss_ref.item()) < 1e-5
    for name, p in fused.named_parameters():
        want = grads_ref[name]
        assert (p.grad - want).abs().max().item() <= 1e-4 * want.abs().max().item(), name


@pytest.mark.parametrize("kernels", ["torch", "triton"])
@pytest.mark.parametrize("autocast", [False, True])
def test_train_step_is_one_graph(kernels, autocast):
    """What train.py compiles (the model's forward with the loss; backward follows from it) is one
    graph with no break on both paths, also under bf16 autocast, where our ops pick their output dtype."""
    import dataclasses

    torch.manual_seed(0)
    model = SmolLM(dataclasses.replace(get_preset("tiny"), num_hidden_layers=2), kernels=kernels).to(DEVICE)
    ids = torch.randint(0, 49152, (2, 16), device=DEVICE)
    torch._dynamo.reset()
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=autocast):
        explained = torch._dynamo.explain(model)(ids, ids)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    ops = {str(n.target) for g in explained.graphs for n in g.graph.nodes if n.op == "call_function"}
    ours = {o for o in ops if "smollm" in o}
    if kernels == "triton":  # the test can fail: the fused ops really are in the graph
        assert {"smollm.add_rms_norm_fwd.default", "smollm.swiglu_packed_fwd.default", "smollm.rope.default",
                "smollm.linear_cross_entropy.default"} <= ours, ops
    else:
        assert not ours


# ------------------------------------------------------------------------- document masks --

def _two_documents(T=24, cut=10):
    torch.manual_seed(0)
    ids = torch.randint(1, 49152, (2, T))
    ids[:, 0], ids[:, cut] = 0, 0  # document A: [0, cut), document B: [cut, T), each from its EOS
    from smollm.data import document_ids

    return ids, document_ids(ids, 0), cut


@pytest.mark.parametrize("flex", [False, True])
def test_no_attention_across_documents(monkeypatch, flex):
    """A changed token of document A never changes a logit of document B in the same window (and
    without document ids, it does: the test can fail)."""
    import smollm.model as M

    monkeypatch.setattr(M, "FLEX", flex)
    model = SmolLM(get_preset("tiny")).eval()
    ids, docs, cut = _two_documents()
    other = ids.clone()
    other[:, 3] = (other[:, 3] + 7) % 49152 + 1  # a token of A
    with torch.no_grad():
        a, b = model(ids, documents=docs), model(other, documents=docs)
        plain_a, plain_b = model(ids), model(other)
    assert torch.equal(a[:, cut:], b[:, cut:])  # B's logits: bit for bit the same
    assert not torch.equal(a[:, 3:cut], b[:, 3:cut])  # A's own do change
    assert (plain_a[:, cut:] - plain_b[:, cut:]).abs().max() > 1e-4  # causal across documents: B sees A
    # Document B alone gives the same logits as B inside the window (positions differ: RoPE is relative).
    with torch.no_grad():
        alone = model(ids[:, cut:])
    torch.testing.assert_close(a[:, cut:], alone, rtol=1e-4, atol=1e-4)


def test_flex_attention_and_the_sdpa_mask_agree(monkeypatch):
    """fp32 logits of the same model with flex_attention's BlockMask and SDPA's bool mask. (Forward
    only: flex_attention has no backward on a CPU; on a GPU it is PyTorch's compiled kernel.)"""
    import smollm.model as M

    ids, docs, _ = _two_documents(T=40, cut=17)
    torch.manual_seed(1)
    model = SmolLM(get_preset("tiny")).eval()
    out = {}
    for flex in (False, True):
        monkeypatch.setattr(M, "FLEX", flex)
        with torch.no_grad():
            out[flex] = model(ids, documents=docs)
    torch.testing.assert_close(out[True], out[False], rtol=1e-4, atol=1e-4)
    assert out[True].abs().max() > 0.1


@pytest.mark.parametrize("flex", [False, True])
def test_train_step_with_documents_is_one_graph(monkeypatch, flex):
    """What train.py compiles with aligned windows (flex_attention on a GPU, the SDPA mask on a CPU)
    is one graph with no break."""
    import dataclasses

    import smollm.model as M

    monkeypatch.setattr(M, "FLEX", flex)
    model = SmolLM(dataclasses.replace(get_preset("tiny"), num_hidden_layers=2))
    ids, docs, _ = _two_documents(T=16, cut=6)
    torch._dynamo.reset()
    with torch.set_grad_enabled(not flex):  # flex_attention has no backward on a CPU
        explained = torch._dynamo.explain(model)(ids, ids, docs)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    ops = {str(n.target) for g in explained.graphs for n in g.graph.nodes}
    assert any("flex_attention" in o for o in ops) == flex, ops
