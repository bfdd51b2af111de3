"""Log-likelihoods of continuations, as lm-eval-harness's Hugging Face backend computes them, batched.

Tokenizing is lm-eval's: a context's trailing spaces move to the continuation, the pair is encoded
whole and the continuation is what follows the context's own token count; a pair longer than the
model's positions loses tokens from the left. A choice's score is the sum of the log-probabilities of
its continuation's tokens; `greedy` says whether each of them was the argmax.

The choices of one item share their context, which runs once: an item is one packed row, the shared
prefix of its choices' inputs followed by each choice's remaining tokens, each attending to the prefix
and causally to itself, never to another choice's, at the positions it would have had alone (a
block-diagonal mask and explicit RoPE positions; the model's KV-cache forward takes both). That is
the same computation as one row per choice, not an approximation. Rows are padded on the right to the
batch's longest; a padding token attends only to itself and no real token attends to it, so padding
never changes a score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Scored:
    loglikelihood: float
    greedy: bool


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval's causal models encode them."""
    if not context:  # the continuation alone, after the prefix token (BOS, else EOS)
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return ([prefix], cont) if cont[:1] != [prefix] else (cont[:1], cont[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    n = len(tokenizer.encode(context))
    return whole[:n], whole[n:]


@dataclass
class _Choice:
    inp: list[int]  # the tokens fed: (context + continuation)[-(L + 1):][:-1]
    targets: list[int]  # the continuation's tokens, predicted by the last len(targets) inputs


def _choices(tokenizer, pairs: list[tuple[str, str]], max_len: int) -> list[_Choice]:
    out = []
    for context, continuation in pairs:
        ctx, cont = encode_pair(tokenizer, context, continuation)
        if not cont:
            raise ValueError(f"the continuation {continuation!r} of {context[-40:]!r} has no tokens")
        whole = (ctx + cont)[-(max_len + 1):]
        out.append(_Choice(whole[:-1], cont[-max_len:]))
    return out


def _common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return n


@dataclass
class _Row:
    """One packed row: a prefix and the suffixes of some choices; where each choice's targets are read."""
    ids: list[int]
    positions: list[int]
    segment: list[int]  # -1: the prefix; k: the k-th suffix of the row
    reads: list[tuple[int, list[int], list[int]]]  # (request index, row indices predicting targets, targets)


def _pack(choices: list[_Choice], first: int, max_len: int) -> list[_Row]:
    """The rows of one item's choices (request indices first, first + 1, ...): one row when the prefix
    and every suffix fit in max_len tokens, else as many as needed, each with the prefix again."""
    p = _common_prefix([c.inp for c in choices]) if len(choices) > 1 else 0
    prefix = choices[0].inp[:p]
    rows: list[_Row] = []
    for k, c in enumerate(choices):
        suffix = c.inp[p:]
        if not rows or len(rows[-1].ids) + len(suffix) > max_len:
            rows.append(_Row(list(prefix), list(range(p)), [-1] * p, []))
        row = rows[-1]
        start, seg = len(row.ids), (row.segment[-1] + 1 if row.segment and row.segment[-1] >= 0 else 0)
        row.ids += suffix
        row.positions += range(p, p + len(suffix))
        row.segment += [seg] * len(suffix)
        # input j of this choice sits at row index j (in the prefix) or start + j - p (in its suffix)
        at = [j if j < p else start + j - p for j in range(len(c.inp) - len(c.targets), len(c.inp))]
        row.reads.append((first + k, at, c.targets))
    return rows


def _batch_tensors(rows: list[_Row], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids and positions (B, T), and the attention mask (B, 1, T, T), True where a token may attend."""
    T = max(len(r.ids) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    pos = torch.zeros(len(rows), T, dtype=torch.long)
    seg = torch.full((len(rows), T), -2, dtype=torch.long)  # -2: padding
    for b, r in enumerate(rows):
        n = len(r.ids)
        ids[b, :n], pos[b, :n], seg[b, :n] = torch.tensor(r.ids), torch.tensor(r.positions), torch.tensor(r.segment)
    q, k = seg[:, :, None], seg[:, None, :]  # (B, T, 1), (B, 1, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()  # (T, T)
    # a token sees the prefix and its own segment, causally; padding sees itself alone
    mask = causal & (((k == -1) & (q != -2)) | ((q == k) & (q != -2)))
    mask |= torch.eye(T, dtype=torch.bool) & (q == -2)
    return ids.to(device), pos.to(device), mask[:, None].to(device)


@torch.no_grad()
def _run_rows(model, rows: list[_Row], device, out: list[Scored | None]) -> None:
    ids, pos, mask = _batch_tensors(rows, device)
    B, T = ids.shape
    model.setup_cache(B, T)
    try:
        logits = model.forward_cached(ids, torch.arange(T, device=device), pos, mask, last_only=False)  # (B, T, V)
    finally:
        model.clear_cache()
    for b, r in enumerate(rows):
        for index, at, targets in r.reads:
            logp = torch.log_softmax(logits[b, at].float(), dim=-1)  # (n, V)
            t = torch.tensor(targets, device=logp.device)
            ll = logp.gather(1, t[:, None]).sum().item()
            out[index] = Scored(ll, bool((logp.argmax(-1) == t).all()))


def loglikelihoods(model, tokenizer, items: list[list[tuple[str, str]]], batch_size: int = 16,
                   device=None, progress=None) -> list[list[Scored]]:
    """Each item's (context, continuation) pairs -> their Scored, in order. `batch_size` packed rows per
    forward (an item is usually one row); `progress(n)` is called with the items done per batch."""
    device = device or next(model.parameters()).device
    max_len = model.config.max_position_embeddings
    rows: list[tuple[int, _Row]] = []  # (item, row)
    first, spans = 0, []
    for i, pairs in enumerate(items):
        rows += [(i, r) for r in _pack(_choices(tokenizer, pairs, max_len), first, max_len)]
        spans.append((first, first + len(pairs)))
        first += len(pairs)
    # Longest first, as lm-eval sorts: rows of a batch are about as long, so padding costs little.
    order = sorted(range(len(rows)), key=lambda j: -len(rows[j][1].ids))
    out: list[Scored | None] = [None] * first
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(order), batch_size):
            chunk = [rows[j] for j in order[s:s + batch_size]]
            _run_rows(model, [r for _, r in chunk], device, out)
            if progress is not None:
                progress(len({i for i, _ in chunk}))
    finally:
        model.train(was_training)
    return [out[a:b] for a, b in spans]
