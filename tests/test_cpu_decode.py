"""smollm/cpu_decode.py: the tuned CPU products give nn.Linear's numbers, are swapped in only for the
duration of a generation, and leave the model (and training after it) exactly as it was."""

import pytest
import torch
import torch.nn.functional as F

from conftest import PROMPTS
from smollm.config import get_preset
from smollm.cpu_decode import _TUNED, DecodeLinear, _groups, _Tuned, cpu_decode, tune
from smollm.generate import generate
from smollm.model import SmolLM

PROMPT_IDS = [[5, 6, 7, 8, 9], [11, 12]]


def _tiny(seed=0):
    torch.manual_seed(seed)
    return SmolLM(get_preset("tiny")).eval()


def _force(model, batch, for_compile, products):
    """Decode with the given products (cycled over the weight shapes) instead of the tuned ones."""
    shapes = sorted(_groups(model))
    _TUNED[model] = _Tuned(choices={(batch, for_compile): {s: products[i % len(products)]
                                                           for i, s in enumerate(shapes)}})


@pytest.mark.parametrize("product", ["column-major", "w_xt", "split", "onednn"])
def test_decode_linear_products_equal_nn_linear(product):
    """fp32, tolerance 1e-5 of the output scale for the tuned number of rows; any other number of
    rows is F.linear itself."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 64, bias=False)
    for shape in [(1, 96), (3, 96), (2, 5, 96)]:
        x = torch.randn(*shape)
        rows = x.reshape(-1, 96).shape[0]
        want = F.linear(x, lin.weight)
        with torch.no_grad():
            got = DecodeLinear(lin, product, rows)(x)
            other = DecodeLinear(lin, product, rows + 1)(x)
        assert got.shape == want.shape
        assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()
        assert torch.equal(other, want)
    with pytest.raises(ValueError, match="nonsense"):
        DecodeLinear(lin, "nonsense", 1)


def test_cpu_decode_leaves_the_model_as_it_was():
    model = _tiny()
    modules = dict(model.named_modules())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prefill = torch.randint(0, model.config.vocab_size, (2, 7))
    with torch.no_grad():
        want = model(prefill)
        for batch, for_compile in [(1, False), (2, False), (2, True)]:
            step = prefill[:batch, :1]  # (batch, 1): as many rows as a decode step
            want_step = model(step)
            with cpu_decode(model, batch, for_compile=for_compile) as choice:
                assert set(choice) == {tuple(m.weight.shape) for m in modules.values()
                                       if isinstance(m, torch.nn.Linear)}
                assert not for_compile or "onednn" not in choice.values()
                assert isinstance(model.lm_head, DecodeLinear)
                assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
                assert list(model.state_dict()) == list(before)
                assert (model(step) - want_step).abs().max().item() < 1e-4  # other summation order
                assert torch.equal(model(prefill), want)  # more rows than the batch: nn.Linear's product
                with pytest.raises(RuntimeError, match="already active"):
                    with cpu_decode(model, batch):
                        pass
            assert torch.equal(model(prefill), want) and torch.equal(model(step), want_step)
    assert all(a is b for a, b in zip(dict(model.named_modules()).values(), modules.values()))
    assert list(dict(model.named_modules())) == list(modules)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("product", ["onednn", "column-major"])
def test_prepared_copies_follow_weight_updates(product):
    """Packed or column-major copies are rebuilt when the weights change (a training step between
    two generations): decoding never uses stale weights."""
    model = _tiny()
    _force(model, 2, False, [product])
    with cpu_decode(model, 2):
        generate(model, PROMPT_IDS, 4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    with cpu_decode(model, 2):
        tuned = generate(model, PROMPT_IDS, 6)
    assert tuned == generate(model, PROMPT_IDS, 6)


def test_training_after_generation_is_bit_identical():
    """A training step after a tuned generation computes exactly what it would have without one."""
    twins = [_tiny(), _tiny()]
    ids = torch.randint(0, 49152, (2, 16), generator=torch.Generator().manual_seed(1))
    results = []
    for i, model in enumerate(twins):
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses = []
        for _ in range(2):
            if i == 0:
                with cpu_decode(model, 2):
                    generate(model, PROMPT_IDS, 4)
            loss = model(ids[:, :-1], ids[:, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        results.append((losses, model.state_dict()))
    (losses_a, state_a), (losses_b, state_b) = results
    assert all(torch.equal(a, b) for a, b in zip(losses_a, losses_b))
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_b)


@pytest.mark.parametrize("batch", [1, 2])
def test_greedy_tokens_equal_without_cpu_decode(ours_golden, tokenizer, batch):
    """Real SmolLM2 weights: the tuned products choose the same tokens as nn.Linear."""
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS[:batch]]
    with cpu_decode(ours_golden, batch):
        tuned = generate(ours_golden, prompts, 24)
    assert tuned == generate(ours_golden, prompts, 24)


def test_compiled_decode_step_with_swapped_modules():
    """torch.compile traces the DecodeLinear modules (every product but oneDNN) to the same tokens."""
    model = _tiny()
    _force(model, 2, True, ["column-major", "w_xt", "split"])
    assert "onednn" not in tune(model, 2, for_compile=True).values()
    with cpu_decode(model, 2, for_compile=True):
        compiled = generate(model, PROMPT_IDS, 8, compile=True)
    assert compiled == generate(model, PROMPT_IDS, 8)
