"""Rotary position embedding (Triton forward/backward + torch.library op + reference), Hugging Face `rotate_half` convention (halves, not interleaved pairs),
on q (B, T, Hq, Dh) and k (B, T, Hkv, Dh), the layout straight out of the projections."""

import torch
import triton
import triton.language as tl

from smollm.kernels.utils import check_dtype


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


@triton.jit
def _rope_rotate(X, OUT, row, t, b_stride_x, t_stride_x, h_stride_x, b_stride_o, t_stride_o, h_stride_o,
                 c1, c2, s1, s2, H, T, HALF: tl.constexpr, BLOCK_H: tl.constexpr, BACKWARD: tl.constexpr):
    heads = tl.arange(0, BLOCK_H)[:, None]  # (BLOCK_H, 1)
    d = tl.arange(0, HALF)[None, :]  # (1, HALF)
    mask = heads < H
    b = row // T
    x_row = X + b * b_stride_x + t * t_stride_x + heads * h_stride_x
    o_row = OUT + b * b_stride_o + t * t_stride_o + heads * h_stride_o
    x1 = tl.load(x_row + d, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + HALF + d, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:  # the transpose of the rotation: rotate by -theta
        o1 = x1 * c1 + x2 * s2
        o2 = x2 * c2 - x1 * s1
    else:  # x * cos + rotate_half(x) * sin
        o1 = x1 * c1 - x2 * s1
        o2 = x2 * c2 + x1 * s2
    tl.store(o_row + d, o1.to(OUT.dtype.element_ty), mask=mask)
    tl.store(o_row + HALF + d, o2.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(Q, K, QO, KO, COS, SIN,
                 qb, qt, qh, kb, kt, kh, qob, qot, qoh, kob, kot, koh, cos_b, cos_t,
                 T, HQ, HKV, HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HKV: tl.constexpr,
                 BACKWARD: tl.constexpr):
    # One program per token: all of its query and key heads, one cos/sin row read once.
    row = tl.program_id(0).to(tl.int64)  # b * T + t
    t = row % T
    b = row // T
    d = tl.arange(0, HALF)[None, :]
    cs = COS + b * cos_b + t * cos_t
    sn = SIN + b * cos_b + t * cos_t
    c1 = tl.load(cs + d).to(tl.float32)
    c2 = tl.load(cs + HALF + d).to(tl.float32)
    s1 = tl.load(sn + d).to(tl.float32)
    s2 = tl.load(sn + HALF + d).to(tl.float32)
    _rope_rotate(Q, QO, row, t, qb, qt, qh, qob, qot, qoh, c1, c2, s1, s2, HQ, T, HALF, BLOCK_HQ, BACKWARD)
    _rope_rotate(K, KO, row, t, kb, kt, kh, kob, kot, koh, c1, c2, s1, s2, HKV, T, HALF, BLOCK_HKV, BACKWARD)


def _launch(q, k, cos, sin, backward: bool):
    check_dtype(q, "rope: q")
    check_dtype(k, "rope: k")
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"rope: q and k must be (B, T, H, Dh), got {tuple(q.shape)} and {tuple(k.shape)}")
    B, T, HQ, D = q.shape
    if k.shape[:2] != (B, T) or k.shape[3] != D:
        raise ValueError(f"rope: k {tuple(k.shape)} does not match q {tuple(q.shape)} in B, T or Dh")
    if D % 2 or D & (D - 1):
        raise ValueError(f"rope: head_dim must be a power of two, got {D}")
    if cos.shape != sin.shape or cos.shape[-2:] != (T, D) or cos.dim() not in (2, 3) or \
            (cos.dim() == 3 and cos.shape[0] not in (1, B)):
        raise ValueError(f"rope: cos/sin must be (T, Dh) or (B, T, Dh) = ({T}, {D}) or ({B}, {T}, {D}), "
                         f"got {tuple(cos.shape)} and {tuple(sin.shape)}")
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    cos, sin = cos.contiguous(), sin.contiguous()
    cos_b = cos.stride(0) if cos.dim() == 3 and cos.shape[0] == B and B > 1 else 0
    qo = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    ko = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if B * T:
        _rope_kernel[(B * T,)](q, k, qo, ko, cos, sin, *q.stride()[:3], *k.stride()[:3], *qo.stride()[:3],
                               *ko.stride()[:3], cos_b, cos.stride(-2), T, q.shape[2], k.shape[2], HALF=D // 2,
                               BLOCK_HQ=triton.next_power_of_2(q.shape[2]), BLOCK_HKV=triton.next_power_of_2(k.shape[2]),
                               BACKWARD=backward, num_warps=1 if D * q.shape[2] <= 1024 else 4)
    return qo, ko


@torch.library.custom_op("smollm::rope", mutates_args=())
def rope_op(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            backward: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch(q, k, cos, sin, backward)


@rope_op.register_fake
def _(q, k, cos, sin, backward):
    return torch.empty_like(q, memory_format=torch.contiguous_format), \
        torch.empty_like(k, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    q, k, cos, sin, backward = inputs
    ctx.save_for_backward(cos, sin)
    ctx.backward = backward


def _backward(ctx, dq, dk):
    cos, sin = ctx.saved_tensors
    dq, dk = rope_op(dq, dk, cos, sin, not ctx.backward)
    return dq, dk, None, None, None


rope_op.register_autograd(_backward, setup_context=_setup_context)


def rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q (B, T, Hq, Dh), k (B, T, Hkv, Dh); cos/sin (T, Dh) or (B, T, Dh) rows of the table at the
    tokens' positions. Returns rotated (q, k), contiguous, in their input dtypes."""
    return rope_op(q, k, cos, sin, False)
