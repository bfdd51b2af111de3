"""Muon (smollm.training.muon) against a reference step: torch.optim.Muon on the same matrices (the
parts of a fused one as separate matrices), torch.optim.AdamW on the rest; a skipped step; the
groups make_optimizer builds."""

import pytest
import torch

from smollm.config import get_preset
from smollm.model import SmolLM
from smollm.train_config import RunConfig, apply_overrides
from smollm.training.muon import MuonAdamW, orthogonalize
from smollm.training.optimizer import make_optimizer, make_scheduler

LR, MU, WD = 0.02, 0.95, 0.1


def test_orthogonalize_pushes_every_singular_value_near_one():
    torch.manual_seed(0)
    for shape in [(64, 64), (96, 32), (32, 96)]:
        k = min(shape)
        u, _ = torch.linalg.qr(torch.randn(shape[0], k))
        v, _ = torch.linalg.qr(torch.randn(shape[1], k))
        g = u @ torch.diag(torch.logspace(-1, 0, k)) @ v.T  # singular values over a decade
        o = orthogonalize(g).float()
        assert o.shape == g.shape
        s = torch.linalg.svdvals(o)
        assert s.min() > 0.5 and s.max() < 1.3, (shape, s.min(), s.max())
        u, _, vt = torch.linalg.svd(g, full_matrices=False)
        # the same directions as U V^T of the SVD: the cosine of the two is high
        cos = (o * (u @ vt)).sum() / (o.norm() * (u @ vt).norm())
        assert cos > 0.9, (shape, cos)


def _grads(shapes, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g) for s in shapes] for _ in range(steps)]


def test_a_matrix_steps_as_torch_optim_muon_does():
    torch.manual_seed(0)
    ours = torch.nn.Parameter(torch.randn(48, 32))
    ref = torch.nn.Parameter(ours.detach().clone())
    opt = MuonAdamW([{"params": [ours], "muon": True}], lr=LR, momentum=MU, weight_decay=WD)
    ref_opt = torch.optim.Muon([ref], lr=LR, momentum=MU, weight_decay=WD, nesterov=True)
    for (g,) in _grads([(48, 32)], 4):
        ours.grad, ref.grad = g.clone(), g.clone()
        opt.step(), ref_opt.step()
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)  # fp32 weights, the same bf16 iteration
    assert not torch.equal(ours, torch.zeros_like(ours))


def test_a_fused_matrix_steps_as_its_parts_would_alone():
    """q, k and v in one (q + 2 kv, d) matrix: each part orthogonalized on its own, with the LR scale
    of its own shape; the same as torch.optim.Muon on three separate matrices."""
    torch.manual_seed(1)
    parts = [64, 16, 16]
    fused = torch.nn.Parameter(torch.randn(sum(parts), 32))
    separate = [torch.nn.Parameter(p.detach().clone()) for p in fused.split(parts)]
    opt = MuonAdamW([{"params": [fused], "muon": True, "splits": [parts]}], lr=LR, momentum=MU, weight_decay=WD)
    ref_opt = torch.optim.Muon(separate, lr=LR, momentum=MU, weight_decay=WD, nesterov=True)
    for (g,) in _grads([(sum(parts), 32)], 3, seed=2):
        fused.grad = g.clone()
        for p, gp in zip(separate, g.split(parts)):
            p.grad = gp.clone()
        opt.step(), ref_opt.step()
    torch.testing.assert_close(fused.detach(), torch.cat([p.detach() for p in separate]), rtol=0, atol=1e-6)
    # The test can fail: the whole matrix orthogonalized at once is another update.
    torch.manual_seed(1)
    whole = torch.nn.Parameter(torch.randn(sum(parts), 32))
    one = torch.optim.Muon([whole], lr=LR, momentum=MU, weight_decay=WD)
    for (g,) in _grads([(sum(parts), 32)], 3, seed=2):
        whole.grad = g.clone()
        one.step()
    assert (whole - fused).abs().max() > 1e-3


@pytest.mark.parametrize("fused", [False, True])
def test_the_other_groups_step_as_torch_optim_adamw_does(fused):
    torch.manual_seed(2)
    a = [torch.nn.Parameter(torch.randn(50, 8)), torch.nn.Parameter(torch.randn(8))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    groups = lambda ps: [{"params": [ps[0]], "weight_decay": WD}, {"params": [ps[1]], "weight_decay": 0.0}]  # noqa
    opt = MuonAdamW(groups(a), lr=3e-3, betas=(0.9, 0.95), eps=1e-8, fused=fused)
    ref = torch.optim.AdamW(groups(b), lr=3e-3, betas=(0.9, 0.95), eps=1e-8, fused=fused)
    for gs in _grads([(50, 8), (8,)], 4, seed=3):
        for p, q, g in zip(a, b, gs):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step(), ref.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert set(opt.state[a[0]]) == {"step", "exp_avg", "exp_avg_sq"}  # AdamW's own state keys


def test_a_found_inf_step_changes_neither_weights_nor_state():
    torch.manual_seed(3)
    m, e = torch.nn.Parameter(torch.randn(16, 8)), torch.nn.Parameter(torch.randn(30, 8))
    opt = MuonAdamW([{"params": [m], "muon": True}, {"params": [e]}], lr=1e-2, fused=True)
    m.grad, e.grad = torch.randn(16, 8), torch.randn(30, 8)
    opt.found_inf = torch.zeros(())
    opt.step()
    before = [m.detach().clone(), e.detach().clone(), opt.state[m]["momentum_buffer"].clone(),
              opt.state[e]["exp_avg"].clone()]
    m.grad, e.grad = torch.full((16, 8), float("nan")), torch.full((30, 8), float("inf"))
    opt.found_inf = torch.ones(())
    opt.step()
    after = [m, e, opt.state[m]["momentum_buffer"], opt.state[e]["exp_avg"]]
    assert all(torch.equal(x, y) for x, y in zip(before, after))
    opt.found_inf = torch.zeros(())
    m.grad, e.grad = torch.randn(16, 8), torch.randn(30, 8)
    opt.step()
    assert not torch.equal(m, before[0]) and not torch.equal(e, before[1])


def test_make_optimizer_puts_the_blocks_matrices_on_muon_and_the_rest_on_adamw():
    cfg = apply_overrides(RunConfig(), ["model.preset=tiny", "data.seq_len=256", "optim.kind=muon", "optim.muon_lr=0.03",
                                        "optim.lr=2e-3"]).validate()
    model = SmolLM(get_preset("tiny"))
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    assert isinstance(opt, MuonAdamW)
    muon, embed, norms = opt.param_groups
    named = {id(p): n for n, p in model.named_parameters()}
    assert sorted(named[id(p)].split(".")[-2] for p in muon["params"]) == sorted(
        ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"] * len(model.model.layers))
    c = model.config
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    assert [q, kv, kv] in muon["splits"] and [c.intermediate_size] * 2 in muon["splits"]
    assert [named[id(p)] for p in embed["params"]] == ["model.embed_tokens.weight"]  # the tied head too
    assert all(p.dim() == 1 for p in norms["params"]) and norms["weight_decay"] == 0.0
    every = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(every) == sorted(named) and len(every) == len(set(every))  # each parameter once
    sched = make_scheduler(opt, cfg)
    assert sched.base_lrs == [0.03, 2e-3, 2e-3]
