"""Rotary position embedding, Hugging Face `rotate_half` convention (halves, not interleaved pairs),
on q (B, T, Hq, Dh) and k (B, T, Hkv, Dh), the layout straight out of the projections."""

import torch


def rope_tables(head_dim: int, max_positions: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables (max_positions, head_dim) in fp32; row p rotates the token at position p."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)  # (P, Dh/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (P, Dh)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_reference(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    # cos/sin: (T, Dh) or (B, T, Dh) -> broadcast over heads. Cast first, as Hugging Face does.
    cos = cos.unsqueeze(-2).to(q.dtype)
    sin = sin.unsqueeze(-2).to(q.dtype)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
