"""smollm/eval/scoring.py and results.py: log-likelihoods batched with the shared context run once,
against one plain forward per choice; padding and batch size change no score; a model forced to prefer
one choice scores 100%. fp32 throughout: scores agree within 1e-4 (the order of float operations
differs), predictions exactly."""

import pytest
import torch

from eval_records import SHIPPED
from smollm.eval.results import average, item_record, table, task_scores
from smollm.eval.scoring import encode_pair, loglikelihoods
from smollm.eval.suite import evaluate
from smollm.eval.tasks import TASKS, Item, load_items

TOL = 1e-4


@pytest.fixture(scope="module")
def tiny(tokenizer):
    from smollm.config import get_preset
    from smollm.model import SmolLM

    torch.manual_seed(0)
    return SmolLM(get_preset("tiny")).eval()


def _plain(model, tokenizer, context, continuation, max_len):
    """lm-eval's computation, one choice at a time: the whole input, causal, no cache, no packing."""
    ctx, cont = encode_pair(tokenizer, context, continuation)
    inp = (ctx + cont)[-(max_len + 1):][:-1]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([inp]))[0].float(), -1)  # (T, V)
    rows = logp[len(inp) - len(cont):]
    return rows.gather(1, torch.tensor(cont)[:, None]).sum().item()


def test_packed_rows_equal_one_forward_per_choice(tiny, tokenizer):
    items = [i.requests for name in ("hellaswag", "winogrande", "commonsense_qa") for i in
             load_items(TASKS[name], SHIPPED, limit=4)]
    got = loglikelihoods(tiny, tokenizer, items, batch_size=5)
    max_len = tiny.config.max_position_embeddings
    for pairs, scored in zip(items, got):
        for (c, x), s in zip(pairs, scored):
            assert s.loglikelihood == pytest.approx(_plain(tiny, tokenizer, c, x, max_len), abs=TOL)


def test_batch_size_and_padding_change_no_score(tiny, tokenizer):
    items = [i.requests for name in TASKS for i in load_items(TASKS[name], SHIPPED, limit=3)]
    runs = [loglikelihoods(tiny, tokenizer, items, batch_size=b) for b in (1, 4, 64)]
    for a in runs[1:]:
        for x, y in zip(runs[0], a):
            assert [s.loglikelihood for s in y] == pytest.approx([s.loglikelihood for s in x], abs=TOL)
            assert [s.greedy for s in y] == [s.greedy for s in x]


def test_truncated_from_the_left_as_lm_eval_does(tiny, tokenizer, monkeypatch):
    """A context longer than the model's positions loses its first tokens; the item no longer fits one
    packed row and is split into rows that each hold the prefix again."""
    monkeypatch.setattr(tiny.config, "max_position_embeddings", 24)
    context = "Question: " + "which of these words is the odd one out " * 3 + "\nAnswer:"
    pairs = [(context, " apple"), (context, " a banana split with cream"), (context, " car")]
    got = loglikelihoods(tiny, tokenizer, [pairs], batch_size=2)[0]
    for (c, x), s in zip(pairs, got):
        assert s.loglikelihood == pytest.approx(_plain(tiny, tokenizer, c, x, 24), abs=TOL)


def test_trailing_space_moves_to_the_continuation(tokenizer):
    assert encode_pair(tokenizer, "The sun is a ", "star") == encode_pair(tokenizer, "The sun is a", " star")
    ctx, cont = encode_pair(tokenizer, "", " star")
    assert ctx == [tokenizer.bos_token_id] and cont == tokenizer.encode(" star", add_special_tokens=False)


class Forced(torch.nn.Module):
    """A model that wants token `want` next, unless the previous token is `poison` (then it is
    indifferent): every choice made of `want` wins, one after `poison` loses."""

    def __init__(self, want: int, poison: int, max_len: int = 256):
        super().__init__()
        self.want, self.poison = want, poison
        self.config = type("C", (), {"max_position_embeddings": max_len, "vocab_size": 49152})()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def setup_cache(self, batch, slots):
        pass

    def clear_cache(self):
        pass

    def forward_cached(self, ids, slots, positions, mask, last_only=False):
        logits = torch.zeros(*ids.shape, self.config.vocab_size)
        logits[..., self.want] = 30.0
        logits[ids == self.poison] = 0.0
        return logits


def test_a_model_forced_to_prefer_one_choice_scores_100_percent(tokenizer):
    yes, = tokenizer.encode(" yes", add_special_tokens=False)
    dog, = tokenizer.encode(" dog", add_special_tokens=False)
    # the gold continuation is all " yes"; the others are other words, or follow " dog"
    items = [Item([("Is it?", " no"), ("Is it?", " yes yes"), ("Is it?", " maybe")], 1, ["no", "yes yes", "maybe"]),
             Item([("Is it?", " yes"), ("Is it?", " no no no no")], 0, ["yes", "no no no no"]),
             Item([("Then the dog", " yes"), ("Then the cat", " yes")], 1, ["Then the dog", "Then the cat"])]
    result = evaluate(Forced(yes, dog), tokenizer, [TASKS["piqa"]], items={"piqa": items}, batch_size=2)
    assert result["tasks"]["piqa"]["acc"] == 1.0 and result["tasks"]["piqa"]["acc_norm"] == 1.0
    assert all(r["greedy"][r["gold"]] for r in result["items"]["piqa"])


def test_scores_stderr_and_average():
    recs = [item_record(Item([("c", " a"), ("c", " bb")], 0, ["a", "bb"]), s) for s in (
        [type("S", (), {"loglikelihood": -1.0, "greedy": True})(), type("S", (), {"loglikelihood": -1.5, "greedy": 0})()],
        [type("S", (), {"loglikelihood": -2.0, "greedy": 0})(), type("S", (), {"loglikelihood": -1.0, "greedy": 0})()],
        [type("S", (), {"loglikelihood": -3.0, "greedy": 0})(), type("S", (), {"loglikelihood": -3.0, "greedy": 0})()])]
    # gold 0. acc: argmax (the first of equals) -> 0, 1, 0; acc_norm: over 1 and 2 characters -> 1, 1, 1
    s = task_scores(TASKS["piqa"], recs)
    assert s["acc"] == pytest.approx(2 / 3) and s["acc_norm"] == 0 and s["acc_norm_stderr"] == 0
    assert s["acc_stderr"] == pytest.approx((1 / 3) ** 0.5 / 3 ** 0.5)  # sample sd (n - 1) / sqrt(n)
    w = task_scores(TASKS["winogrande"], recs)
    assert "acc_norm" not in w and w["score"] == w["acc"]
    avg = average({"piqa": s, "winogrande": w})
    assert avg["score"] == pytest.approx((0 + 2 / 3) / 2)
    assert avg["stderr"] == pytest.approx((s["acc_norm_stderr"] ** 2 + w["acc_stderr"] ** 2) ** 0.5 / 2)
    text = table({"tasks": {"piqa": s, "winogrande": w}, "average": avg})
    assert "| piqa | 3 | acc_norm | 0.0 |" in text and "| SmolLM2-135M (model card, lighteval) | 68.4 | 51.3 |" in text
