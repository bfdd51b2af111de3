"""SwiGLU gate, silu(gate) * up: Triton forward/backward, torch.library op, and the reference.
Backward recomputes silu from gate instead of storing it, and writes d_gate and d_up in one pass."""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.utils import check_dtype

BLOCK = 1024


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


@triton.jit
def _swiglu_fwd(G, U, Y, n, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    g = tl.load(G + i, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + i, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + i, (g * tl.sigmoid(g) * u).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd(DY, G, U, DG, DU, n, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    dy = tl.load(DY + i, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + i, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + i, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    silu = g * s
    tl.store(DU + i, (dy * silu).to(DU.dtype.element_ty), mask=mask)
    # d silu(g) / dg = s * (1 + g * (1 - s))
    tl.store(DG + i, (dy * u * s * (1.0 + g * (1.0 - s))).to(DG.dtype.element_ty), mask=mask)


def _flat(x: torch.Tensor, shape, name: str) -> torch.Tensor:
    check_dtype(x, name)
    if x.shape != shape:
        raise ValueError(f"swiglu: gate has shape {tuple(shape)} but {name} has {tuple(x.shape)}")
    return x.contiguous().view(-1)  # elementwise: any layout works once made dense


@torch.library.custom_op("smollm::swiglu_fwd", mutates_args=())
def swiglu_fwd(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    g, u = _flat(gate, gate.shape, "swiglu: gate"), _flat(up, gate.shape, "up")
    y = torch.empty(gate.shape, dtype=torch.promote_types(gate.dtype, up.dtype), device=gate.device)
    n = g.numel()
    if n:
        _swiglu_fwd[(triton.cdiv(n, BLOCK),)](g, u, y, n, BLOCK=BLOCK, num_warps=4)
    return y


@swiglu_fwd.register_fake
def _(gate, up):
    return gate.new_empty(gate.shape, dtype=torch.promote_types(gate.dtype, up.dtype))


@torch.library.custom_op("smollm::swiglu_bwd", mutates_args=())
def swiglu_bwd(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g, u = _flat(gate, gate.shape, "swiglu: gate"), _flat(up, gate.shape, "up")
    d = _flat(dy, gate.shape, "grad")
    dg = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    du = torch.empty(up.shape, dtype=up.dtype, device=up.device)
    n = g.numel()
    if n:
        _swiglu_bwd[(triton.cdiv(n, BLOCK),)](d, g, u, dg, du, n, BLOCK=BLOCK, num_warps=4)
    return dg, du


@swiglu_bwd.register_fake
def _(dy, gate, up):
    return gate.new_empty(gate.shape), up.new_empty(up.shape)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, dy):
    gate, up = ctx.saved_tensors
    return swiglu_bwd(dy, gate, up)


swiglu_fwd.register_autograd(_backward, setup_context=_setup_context)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, any shape (gate and up alike); fp32 inside."""
    return swiglu_fwd(gate, up)
