"""RMSNorm: Triton forward/backward, a torch.library custom op (so torch.compile(fullgraph=True) takes
it whole), and the plain-PyTorch reference that the tests and the model's `kernels="torch"` path use.

Forward saves the fp32 inverse RMS per row. Backward gives dX per row and dW from per-program
partial sums (each program owns a band of rows), reduced afterwards: no atomics on one row.
"""

import torch
import triton
import triton.language as tl

from kernels.utils import as_rows, num_programs


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    # Hugging Face LlamaRMSNorm: normalize in fp32, cast back to x's dtype, then scale.
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(x.dtype)


@triton.jit
def _rms_norm_fwd(X, W, Y, RSTD, stride_x, stride_y, D, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
    # Round to x's dtype before scaling, as Hugging Face does (a no-op in fp32).
    x_hat = (x * rstd).to(X.dtype.element_ty).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (x_hat * w).to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + row, rstd)


@triton.jit
def _rms_norm_bwd(DY, X, W, RSTD, DX, DW_PART, stride_dy, stride_x, stride_dx, N, D, rows_per_program,
                  BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    start = pid * rows_per_program
    for i in range(0, rows_per_program):
        row = (start + i).to(tl.int64)
        if row < N:
            x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row)
            x_hat = x * rstd
            dw += dy * x_hat.to(X.dtype.element_ty).to(tl.float32)
            g = dy * w
            # d/dx of x * rstd(x): rstd * (g - x_hat * mean(g * x_hat))
            dx = rstd * (g - x_hat * (tl.sum(g * x_hat, axis=0) / D))
            tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
    tl.store(DW_PART + pid * D + cols, dw, mask=mask)


@torch.library.custom_op("smollm::rms_norm_fwd", mutates_args=())
def rms_norm_fwd(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    x2 = as_rows(x, "rms_norm: x")  # (N, D)
    N, D = x2.shape
    if weight.shape != (D,):
        raise ValueError(f"rms_norm: weight has shape {tuple(weight.shape)}, expected ({D},)")
    y = torch.empty((N, D), dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    rstd = torch.empty(N, dtype=torch.float32, device=x.device)
    if N:
        _rms_norm_fwd[(N,)](x2, weight.contiguous(), y, rstd, x2.stride(0), y.stride(0), D, eps,
                            BLOCK=triton.next_power_of_2(D), num_warps=4 if D <= 2048 else 8)
    return y.view(*x.shape[:-1], D), rstd


@rms_norm_fwd.register_fake
def _(x, weight, eps):
    return x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype)), \
        x.new_empty(x.shape[:-1].numel(), dtype=torch.float32)


@torch.library.custom_op("smollm::rms_norm_bwd", mutates_args=())
def rms_norm_bwd(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                 rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x2 = as_rows(x, "rms_norm: x")
    dy2 = as_rows(dy, "rms_norm: grad")
    N, D = x2.shape
    dx = torch.empty_like(x2)
    programs = num_programs(x.device, N)
    rows_per_program = triton.cdiv(N, programs) if N else 0
    dw_part = torch.zeros((programs, D), dtype=torch.float32, device=x.device)
    if N:
        _rms_norm_bwd[(programs,)](dy2, x2, weight.contiguous(), rstd, dx, dw_part, dy2.stride(0), x2.stride(0),
                                   dx.stride(0), N, D, rows_per_program, BLOCK=triton.next_power_of_2(D),
                                   num_warps=4 if D <= 2048 else 8)
    return dx.view(x.shape), dw_part.sum(0).to(weight.dtype)


@rms_norm_bwd.register_fake
def _(dy, x, weight, rstd):
    return torch.empty_like(x), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    x, weight, eps = inputs
    ctx.save_for_backward(x, weight, output[1])


def _backward(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = rms_norm_bwd(dy, x, weight, rstd)
    return dx, dw, None


rms_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """x (..., D), weight (D,) -> (..., D); Hugging Face LlamaRMSNorm semantics, fp32 inside."""
    return rms_norm_fwd(x, weight, eps)[0]
