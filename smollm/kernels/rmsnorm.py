"""RMSNorm and fused residual-add + RMSNorm: Triton forward/backward, torch.library custom ops (so
torch.compile(fullgraph=True) takes them whole), and the plain-PyTorch references that the tests and the
model's `kernels="torch"` path use.

One forward kernel serves both: with HAS_DELTA it reads x and delta once, writes the new residual
x + delta and normalizes it; without, it normalizes x. It writes y straight in the output dtype (the
autocast dtype when autocast is on: the next Linear would cast it anyway) and saves the fp32 inverse
RMS per row. One backward kernel gives dX per row, with the residual's own gradient folded in when
there is one, and dW from per-program partial sums (each program owns a band of rows), reduced
afterwards: no atomics on one row.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from smollm.kernels.utils import as_rows, num_programs


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    # Hugging Face LlamaRMSNorm: normalize in fp32, cast back to x's dtype, then scale.
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(x.dtype)


def add_rms_norm_reference(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor,
                           eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    # Hugging Face's decoder layer: `hidden_states = residual + hidden_states`, then the next norm.
    residual = x + delta
    return residual, rms_norm_reference(residual, weight, eps)


@triton.jit
def _rms_norm_fwd(X, DELTA, RES, W, Y, RSTD, stride_x, stride_delta, stride_res, stride_y, D, eps,
                  HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr):
    # Without HAS_DELTA the launcher passes X as DELTA and RES: RES only names the residual's dtype.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_DELTA:
        x += tl.load(DELTA + row * stride_delta + cols, mask=mask, other=0.0).to(tl.float32)
        # Round to the residual's dtype before normalizing, as the reference does (a no-op in fp32).
        r = x.to(RES.dtype.element_ty)
        tl.store(RES + row * stride_res + cols, r, mask=mask)
        x = r.to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
    # Round to the residual's dtype before scaling, as Hugging Face does (a no-op in fp32).
    x_hat = (x * rstd).to(RES.dtype.element_ty).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (x_hat * w).to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + row, rstd)


@triton.jit
def _rms_norm_bwd(DY, DRES, RES, W, RSTD, DX, DDELTA, DW_PART, stride_dy, stride_dres, stride_res, stride_dx,
                  stride_ddelta, N, D, rows_per_program, HAS_DRES: tl.constexpr, HAS_DDELTA: tl.constexpr,
                  BLOCK: tl.constexpr):
    # RES is the normalized input (x for rms_norm, the new residual for add_rms_norm). DRES, the
    # gradient of that residual from its other users, is added to dX when HAS_DRES. DDELTA gets the same
    # values in delta's dtype when HAS_DDELTA (delta's dtype differs from x's).
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    start = pid * rows_per_program
    for i in range(0, rows_per_program):
        row = (start + i).to(tl.int64)
        if row < N:
            x = tl.load(RES + row * stride_res + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row)
            x_hat = x * rstd
            dw += dy * x_hat.to(RES.dtype.element_ty).to(tl.float32)
            g = dy * w
            # d/dx of x * rstd(x): rstd * (g - x_hat * mean(g * x_hat))
            dx = rstd * (g - x_hat * (tl.sum(g * x_hat, axis=0) / D))
            if HAS_DRES:
                dx += tl.load(DRES + row * stride_dres + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
            if HAS_DDELTA:
                tl.store(DDELTA + row * stride_ddelta + cols, dx.to(DDELTA.dtype.element_ty), mask=mask)
    tl.store(DW_PART + pid * D + cols, dw, mask=mask)


def _num_warps(D: int) -> int:
    return 4 if D <= 2048 else 8


def _forward(x, delta, weight, eps, out_dtype, name):
    """-> (residual or None, y, rstd); residual only with a delta."""
    x2 = as_rows(x, f"{name}: x")  # (N, D)
    N, D = x2.shape
    if weight.shape != (D,):
        raise ValueError(f"{name}: weight has shape {tuple(weight.shape)}, expected ({D},)")
    if delta is None:
        d2 = res = x2
    else:
        if delta.shape != x.shape:
            raise ValueError(f"{name}: delta has shape {tuple(delta.shape)}, expected x's {tuple(x.shape)}")
        d2 = as_rows(delta, f"{name}: delta")
        res = torch.empty((N, D), dtype=torch.promote_types(x.dtype, delta.dtype), device=x.device)
    y = torch.empty((N, D), dtype=out_dtype, device=x.device)
    rstd = torch.empty(N, dtype=torch.float32, device=x.device)
    if N:
        _rms_norm_fwd[(N,)](x2, d2, res, weight.contiguous(), y, rstd, x2.stride(0), d2.stride(0), res.stride(0),
                            y.stride(0), D, eps, HAS_DELTA=delta is not None, BLOCK=triton.next_power_of_2(D),
                            num_warps=_num_warps(D))
    return (None if delta is None else res.view(x.shape)), y.view(x.shape), rstd


@torch.library.custom_op("smollm::rms_norm_fwd", mutates_args=())
def rms_norm_fwd(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    _, y, rstd = _forward(x, None, weight, eps, out_dtype, "rms_norm")
    return y, rstd


@rms_norm_fwd.register_fake
def _(x, weight, eps, out_dtype):
    return x.new_empty(x.shape, dtype=out_dtype), x.new_empty(x.shape[:-1].numel(), dtype=torch.float32)


@torch.library.custom_op("smollm::add_rms_norm_fwd", mutates_args=())
def add_rms_norm_fwd(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float,
                     out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(x, delta, weight, eps, out_dtype, "add_rms_norm")


@add_rms_norm_fwd.register_fake
def _(x, delta, weight, eps, out_dtype):
    return (x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, delta.dtype)),
            x.new_empty(x.shape, dtype=out_dtype), x.new_empty(x.shape[:-1].numel(), dtype=torch.float32))


@torch.library.custom_op("smollm::rms_norm_bwd", mutates_args=())
def rms_norm_bwd(dy: torch.Tensor, d_res: Optional[torch.Tensor], res: torch.Tensor, weight: torch.Tensor,
                 rstd: torch.Tensor, dx_dtype: torch.dtype, ddelta_dtype: Optional[torch.dtype]) -> list[torch.Tensor]:
    """[dx, dw], or [dx, d_delta, dw] when ddelta_dtype is given; d_res (optional) is added to dx."""
    res2 = as_rows(res, "rms_norm: residual")
    dy2 = as_rows(dy, "rms_norm: grad")
    dres2 = dy2 if d_res is None else as_rows(d_res, "rms_norm: residual grad")
    N, D = res2.shape
    dx = torch.empty((N, D), dtype=dx_dtype, device=res.device)
    ddelta = dx if ddelta_dtype is None else torch.empty((N, D), dtype=ddelta_dtype, device=res.device)
    programs = num_programs(res.device, N)
    rows_per_program = triton.cdiv(N, programs) if N else 0
    dw_part = torch.empty((programs, D), dtype=torch.float32, device=res.device)  # every program writes its row
    if N:
        _rms_norm_bwd[(programs,)](dy2, dres2, res2, weight.contiguous(), rstd, dx, ddelta, dw_part, dy2.stride(0),
                                   dres2.stride(0), res2.stride(0), dx.stride(0), ddelta.stride(0), N, D,
                                   rows_per_program, HAS_DRES=d_res is not None, HAS_DDELTA=ddelta_dtype is not None,
                                   BLOCK=triton.next_power_of_2(D), num_warps=_num_warps(D))
    dw = dw_part.sum(0).to(weight.dtype)
    if ddelta_dtype is None:
        return [dx.view(res.shape), dw]
    return [dx.view(res.shape), ddelta.view(res.shape), dw]


@rms_norm_bwd.register_fake
def _(dy, d_res, res, weight, rstd, dx_dtype, ddelta_dtype):
    dx = res.new_empty(res.shape, dtype=dx_dtype)
    if ddelta_dtype is None:
        return [dx, torch.empty_like(weight)]
    return [dx, res.new_empty(res.shape, dtype=ddelta_dtype), torch.empty_like(weight)]


def _setup_rms_norm(ctx, inputs, output):
    x, weight, eps, out_dtype = inputs
    ctx.save_for_backward(x, weight, output[1])
    ctx.set_materialize_grads(False)


def _backward_rms_norm(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    if dy is None:
        return None, None, None, None
    dx, dw = rms_norm_bwd(dy, None, x, weight, rstd, x.dtype, None)
    return dx, dw, None, None


rms_norm_fwd.register_autograd(_backward_rms_norm, setup_context=_setup_rms_norm)


def _setup_add_rms_norm(ctx, inputs, output):
    x, delta, weight, eps, out_dtype = inputs
    residual, _, rstd = output
    ctx.save_for_backward(residual, weight, rstd)  # not x and delta: the residual is what backward reads
    ctx.dtypes = x.dtype, delta.dtype
    ctx.set_materialize_grads(False)  # d_residual is None when the new residual is unused (the final norm)


def _backward_add_rms_norm(ctx, d_res, dy, _drstd):
    residual, weight, rstd = ctx.saved_tensors
    x_dtype, delta_dtype = ctx.dtypes
    if dy is None:  # only the residual was used: y's branch contributes nothing
        if d_res is None:
            return None, None, None, None, None
        return d_res.to(x_dtype), d_res.to(delta_dtype), None, None, None
    if delta_dtype == x_dtype:  # one tensor for both inputs: the gradients are equal
        dx, dw = rms_norm_bwd(dy, d_res, residual, weight, rstd, x_dtype, None)
        return dx, dx, dw, None, None
    dx, ddelta, dw = rms_norm_bwd(dy, d_res, residual, weight, rstd, x_dtype, delta_dtype)
    return dx, ddelta, dw, None, None


add_rms_norm_fwd.register_autograd(_backward_add_rms_norm, setup_context=_setup_add_rms_norm)


def _out_dtype(device: torch.device, residual_dtype: torch.dtype, weight: torch.Tensor) -> torch.dtype:
    # Under autocast the next Linear would cast y to the autocast dtype: write it in that dtype directly.
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return torch.promote_types(residual_dtype, weight.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """x (..., D), weight (D,) -> y (..., D); Hugging Face LlamaRMSNorm semantics, fp32 inside.
    y's dtype: the autocast dtype when autocast is enabled for x's device, else promote(x, weight)."""
    return rms_norm_fwd(x, weight, eps, _out_dtype(x.device, x.dtype, weight))[0]


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor,
                 eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """x, delta (..., D), weight (D,) -> (residual, y): residual = x + delta in promote(x, delta),
    y = rms_norm(residual, weight, eps) in the autocast dtype when autocast is enabled for x's device,
    else promote(residual, weight). One kernel forward, one backward."""
    residual_dtype = torch.promote_types(x.dtype, delta.dtype)
    residual, y, _ = add_rms_norm_fwd(x, delta, weight, eps, _out_dtype(x.device, residual_dtype, weight))
    return residual, y
