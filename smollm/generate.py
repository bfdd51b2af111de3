"""Text generation with a static KV cache: the prompt is prefilled in one forward, then each new token
is decoded at its own position. Greedy, temperature, top-k, top-p, repetition penalty; several
prompts at once (left-padded, masked); streaming. Its command line: smollm.cli.generate."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int = 0

    def __post_init__(self):
        for name in ("temperature", "top_p", "repetition_penalty"):  # NaN passes every `< 0` check below
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")


def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits (B, V) with those of the tokens marked in `seen` (B, V) made less likely, as
    transformers does: a positive logit divided by the penalty, a negative one multiplied."""
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


def next_tokens(logits: torch.Tensor, seen: torch.Tensor | None, s: Sampling,
                generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) -> token ids (B,). `seen` (B, V) marks tokens already in each sequence (for
    the repetition penalty). Order as in transformers: penalty, temperature, top-k, top-p."""
    logits = logits.float()
    if s.repetition_penalty != 1.0 and seen is not None:
        logits = repetition_penalty(logits, seen, s.repetition_penalty)
    if s.temperature == 0:
        return logits.argmax(-1)
    logits = logits / s.temperature
    if s.top_k is not None and s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p is not None and s.top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)  # (B, V)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the ones before it already hold top_p of the mass; the first always stays.
        drop = (probs.cumsum(-1) - probs) > s.top_p
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


class CachedDecoder:
    """Holds the caches and masks of one batch of left-padded prompts."""

    def __init__(self, model, prompts: list[list[int]], max_new_tokens: int, pad_id: int = 0,
                 compile: bool = False):
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        ctx = model.config.max_position_embeddings
        longest = max(len(p) for p in prompts)
        if longest > ctx:
            raise ValueError(f"prompt of {longest} tokens is longer than the model's context ({ctx} positions)")
        if longest == ctx and max_new_tokens > 0:
            raise ValueError(f"the prompt fills the model's context ({ctx} positions); no room for new tokens")
        self.model = model
        self.device = model.model.embed_tokens.weight.device
        self.B, self.L = len(prompts), longest
        self.max_new_tokens = min(max_new_tokens, ctx - longest)  # positions beyond the context do not exist
        self.S = self.L + self.max_new_tokens
        self.pads = torch.tensor([self.L - len(p) for p in prompts], device=self.device)  # (B,)
        ids = [[pad_id] * (self.L - len(p)) + list(p) for p in prompts]
        self.ids = torch.tensor(ids, dtype=torch.long, device=self.device)  # (B, L)
        self.slots = torch.arange(self.S, device=self.device)  # (S,)
        self.valid = self.slots[None, :] >= self.pads[:, None]  # (B, S): padding slots are never attended
        self.slot = self.L
        model.setup_cache(self.B, self.S)
        self.step_fn = model.forward_cached
        self.compiled = compile
        if compile:
            from smollm.kernels import register_inductor_fallbacks

            register_inductor_fallbacks()  # torch < 2.13: the decode step's ops, without an IR-printing log
            self.step_fn = torch.compile(model.forward_cached, fullgraph=True, dynamic=False)

    def prefill(self) -> torch.Tensor:
        """The prompts in one forward -> logits (B, V) at their last token."""
        L = self.L
        q = torch.arange(L, device=self.device)
        k = self.slots
        causal = k[None, :] <= q[:, None]  # (L, S)
        # A padding query attends to itself alone (a row with nothing allowed would be NaN).
        mask = causal[None] & (self.valid[:, None, :] | (k[None, None, :] == q[None, :, None]))  # (B, L, S)
        positions = (q[None, :] - self.pads[:, None]).clamp(min=0)  # (B, L): each prompt starts at 0
        return self.model.forward_cached(self.ids, q, positions, mask[:, None])

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B,) at the next slot -> logits (B, V)."""
        if self.slot >= self.S:
            raise RuntimeError("the cache is full")
        slot = torch.tensor([self.slot], device=self.device)
        # Eager: attend to the filled slots only (the cache read grows with the text, not with S);
        # compiled: the whole static cache, masked, so that one graph serves every step.
        n = self.S if self.compiled else self.slot + 1
        mask = ((self.slots[None, :n] <= self.slot) & self.valid[:, :n])[:, None, None, :]  # (B, 1, 1, n)
        positions = (slot - self.pads)[:, None]  # (B, 1)
        self.slot += 1
        return self.step_fn(tokens[:, None], slot, positions, mask)

    def close(self):
        self.model.clear_cache()


def _seen(prompts: list[list[int]], vocab_size: int, device) -> torch.Tensor:
    """(B, V): True for every token of each prompt (what the repetition penalty starts from)."""
    seen = torch.zeros(len(prompts), vocab_size, dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        seen[i, torch.tensor(p, device=device)] = True
    return seen


@torch.no_grad()
def generate(model, prompts: list[list[int]], max_new_tokens: int, sampling: Sampling | None = None,
             eos_id: int | None = None, pad_id: int = 0, compile: bool = False,
             on_token: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """New tokens for each prompt (ending at eos_id, included, when it comes). on_token(i, id) is
    called as each token of prompt i is chosen."""
    s = sampling or Sampling()
    dec = CachedDecoder(model, prompts, max_new_tokens, pad_id, compile)
    device = dec.device
    gen = torch.Generator(device=device).manual_seed(s.seed)
    seen = _seen(prompts, model.config.vocab_size, device) if s.repetition_penalty != 1.0 else None
    out: list[list[int]] = [[] for _ in prompts]
    done = torch.zeros(dec.B, dtype=torch.bool, device=device)
    try:
        logits = dec.prefill()
        for t in range(dec.max_new_tokens):
            tok = next_tokens(logits, seen, s, gen)  # (B,)
            tok = torch.where(done, torch.full_like(tok, pad_id), tok)
            for i, (tid, fin) in enumerate(zip(tok.tolist(), done.tolist())):
                if not fin:
                    out[i].append(tid)
                    if on_token is not None:
                        on_token(i, tid)
            if eos_id is not None:
                done |= tok == eos_id
            if bool(done.all()) or t == dec.max_new_tokens - 1:
                break
            if seen is not None:
                seen[torch.arange(dec.B, device=device), tok] = True
            logits = dec.step(tok)
    finally:
        dec.close()
    return out


def context_cap_note(model, prompts: list[list[int]], max_new_tokens: int) -> str | None:
    """One line when max_new_tokens is more than the context leaves after the longest prompt (the
    decoder caps it there), else None."""
    ctx = model.config.max_position_embeddings
    longest = max((len(p) for p in prompts), default=0)
    room = ctx - longest
    if 0 < room < max_new_tokens:
        return (f"--max-new-tokens {max_new_tokens} capped at {room} "
                f"(context {ctx} - prompt length {longest})")
    return None


def text_so_far(tokenizer, ids: list[int]) -> str | None:
    """The text of the tokens chosen so far, or None while its last character is still incomplete
    (a multi-byte character split across tokens decodes to U+FFFD until its last byte comes)."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return None if text.endswith("\ufffd") else text
