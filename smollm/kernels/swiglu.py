"""SwiGLU gate, silu(gate) * up: Triton forward/backward, torch.library ops, and the references.

Two entry points share the kernels: swiglu(gate, up) on two tensors, and swiglu_packed(gate_up) on the
two halves of one (..., 2F) tensor, the output of one fused gate-up projection. The kernels index rows
by a row stride (rows x F, unit stride along F), so both read their inputs in place: the halves of
gate_up, or row-strided views, are never copied. Backward recomputes silu from gate instead of storing
it and writes d_gate and d_up in one pass; for swiglu_packed into the two halves of ONE (..., 2F)
gradient, so autograd has nothing to concatenate."""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from smollm.kernels.utils import as_rows, check_dtype

BLOCK = 1024  # columns per program at most; a row of F columns takes cdiv(F, block) programs


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def swiglu_packed_reference(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


@triton.jit
def _swiglu_fwd(G, U, Y, stride_g, stride_u, stride_y, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (g * tl.sigmoid(g) * u).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd(DY, G, U, DG, DU, stride_dy, stride_g, stride_u, stride_dg, stride_du, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    silu = g * s
    tl.store(DU + row * stride_du + cols, (dy * silu).to(DU.dtype.element_ty), mask=mask)
    # d silu(g) / dg = s * (1 + g * (1 - s))
    tl.store(DG + row * stride_dg + cols, (dy * u * s * (1.0 + g * (1.0 - s))).to(DG.dtype.element_ty), mask=mask)


def _grid(n_rows: int, n_cols: int):
    block = min(BLOCK, triton.next_power_of_2(n_cols))
    return (n_rows, triton.cdiv(n_cols, block)), block


def _fwd(g2, u2, y2):
    """g2, u2 (N, F) unit stride along F, any row stride; y2 (N, F) output."""
    n_rows, n_cols = g2.shape
    if n_rows * n_cols:
        grid, block = _grid(n_rows, n_cols)
        _swiglu_fwd[grid](g2, u2, y2, g2.stride(0), u2.stride(0), y2.stride(0), n_cols, BLOCK=block, num_warps=4)


def _bwd(dy2, g2, u2, dg2, du2):
    n_rows, n_cols = g2.shape
    if n_rows * n_cols:
        grid, block = _grid(n_rows, n_cols)
        _swiglu_bwd[grid](dy2, g2, u2, dg2, du2, dy2.stride(0), g2.stride(0), u2.stride(0), dg2.stride(0),
                          du2.stride(0), n_cols, BLOCK=block, num_warps=4)


def _as_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    """(..., F) -> (N, F) with unit stride along F: a view for any layout that allows one (scalars and
    empty tensors included)."""
    if x.dim() == 0:
        x = x.view(1)
    if x.numel() == 0:
        check_dtype(x, name)
        return x.new_empty(x.shape[:-1].numel(), x.shape[-1])
    return as_rows(x, name)


def _rows(x: torch.Tensor, shape, name: str) -> torch.Tensor:
    if x.shape != shape:
        raise ValueError(f"swiglu: gate has shape {tuple(shape)} but {name} has {tuple(x.shape)}")
    return _as_rows(x, f"swiglu: {name}")


def _halves(gate_up: torch.Tensor):
    x2 = _as_rows(gate_up, "swiglu_packed: gate_up")  # (N, 2F)
    if x2.shape[1] % 2:
        raise ValueError(f"swiglu_packed: gate_up's last dimension must be even, got {tuple(gate_up.shape)}")
    f = x2.shape[1] // 2
    return x2[:, :f], x2[:, f:]  # views: one row stride, the up half F elements further on


# ---- swiglu(gate, up) ----

@torch.library.custom_op("smollm::swiglu_fwd", mutates_args=())
def swiglu_fwd(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    g2, u2 = _rows(gate, gate.shape, "gate"), _rows(up, gate.shape, "up")
    y = torch.empty(g2.shape, dtype=torch.promote_types(gate.dtype, up.dtype), device=gate.device)
    _fwd(g2, u2, y)
    return y.view(gate.shape)


@swiglu_fwd.register_fake
def _(gate, up):
    return gate.new_empty(gate.shape, dtype=torch.promote_types(gate.dtype, up.dtype))


@torch.library.custom_op("smollm::swiglu_bwd", mutates_args=())
def swiglu_bwd(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g2, u2, d2 = _rows(gate, gate.shape, "gate"), _rows(up, gate.shape, "up"), _rows(dy, gate.shape, "grad")
    dg = torch.empty(g2.shape, dtype=gate.dtype, device=gate.device)
    du = torch.empty(u2.shape, dtype=up.dtype, device=up.device)
    _bwd(d2, g2, u2, dg, du)
    return dg.view(gate.shape), du.view(up.shape)


@swiglu_bwd.register_fake
def _(dy, gate, up):
    return gate.new_empty(gate.shape), up.new_empty(up.shape)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, dy):
    gate, up = ctx.saved_tensors
    return swiglu_bwd(dy, gate, up)


swiglu_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---- swiglu_packed(gate_up) ----

@torch.library.custom_op("smollm::swiglu_packed_fwd", mutates_args=())
def swiglu_packed_fwd(gate_up: torch.Tensor) -> torch.Tensor:
    g2, u2 = _halves(gate_up)
    y = torch.empty(g2.shape, dtype=gate_up.dtype, device=gate_up.device)
    _fwd(g2, u2, y)
    return y.view(*gate_up.shape[:-1], g2.shape[1])


@swiglu_packed_fwd.register_fake
def _(gate_up):
    return gate_up.new_empty(*gate_up.shape[:-1], gate_up.shape[-1] // 2)


@torch.library.custom_op("smollm::swiglu_packed_bwd", mutates_args=())
def swiglu_packed_bwd(dy: torch.Tensor, gate_up: torch.Tensor) -> torch.Tensor:
    g2, u2 = _halves(gate_up)
    d2 = _rows(dy, (*gate_up.shape[:-1], g2.shape[1]), "grad")
    dgu = torch.empty((g2.shape[0], 2 * g2.shape[1]), dtype=gate_up.dtype, device=gate_up.device)
    f = g2.shape[1]
    _bwd(d2, g2, u2, dgu[:, :f], dgu[:, f:])  # the gate half and the up half of one gradient
    return dgu.view(gate_up.shape)


@swiglu_packed_bwd.register_fake
def _(dy, gate_up):
    return gate_up.new_empty(gate_up.shape)


def _setup_context_packed(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _backward_packed(ctx, dy):
    (gate_up,) = ctx.saved_tensors
    return swiglu_packed_bwd(dy, gate_up)


swiglu_packed_fwd.register_autograd(_backward_packed, setup_context=_setup_context_packed)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, any shape (gate and up alike); fp32 inside. Layouts with unit stride along the
    last dimension (row-strided views included) are read in place."""
    return swiglu_fwd(gate, up)


def swiglu_packed(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up (..., 2F), the output of one fused gate-up projection -> silu(gate) * up (..., F), where
    gate = gate_up[..., :F] and up = gate_up[..., F:]. The halves are read in place; the gradient comes
    back as one (..., 2F) tensor."""
    return swiglu_packed_fwd(gate_up)
