"""Fused linear (LM head) + cross-entropy, chunked over rows, so the full (N, V) logits never exist.

Per chunk of rows: logits = h @ W^T (a GEMM), then one Triton program per row does an online
log-sum-exp, the loss, and overwrites the logits in place with their gradient; two more GEMMs turn
that at once into the chunk's grad_hidden and add it to grad_weight. The gradients are computed in
the forward (the loss is always the graph's last op); backward only scales them by the incoming
gradient, in place, and hands them over, so backward through the same graph twice (retain_graph) is
refused.

Dtypes. The GEMMs run in one compute dtype: autocast's when autocast is on for the device, else
hidden's. The weight (an fp32 master under autocast) and hidden are cast to it once per call, inside
the op, so autograd sees no cast node: the gradients come back in the inputs' own dtypes (fp32
master weight -> fp32 grad_weight, with no bf16 round trip). The loss is fp32.

grad_weight accumulates in fp32 over the chunks, whatever the compute dtype:
- fp32 compute: grad_weight.addmm_(logits^T, h), in place.
- bf16/fp16 compute on a device with fp32-output GEMMs: torch.addmm(grad_weight, logits^T, h,
  out_dtype=torch.float32, out=grad_weight) (aten::addmm.dtype_out; CUDA only in torch 2.13, the CPU
  raises NotImplementedError). Used only where a once-per-device probe (_fp32_out_gemm_ok) has run it
  on tiny tensors and checked it against an fp32 reference, the accumulator aliased as `out`.
- otherwise (the fallback; the CPU): grad_weight += (logits^T @ h).float(), a V x D product in the
  compute dtype, an fp32 copy and an fp32 read-modify-write per chunk; few, large chunks keep that
  cheap.

Chunk size: from a memory budget, CHUNK_BYTES (512 MiB) for one chunk's (rows, V) logits buffer in
the compute dtype (budget_chunk_rows). At V = 49152 in bf16 that is at most 5461 rows (5376, a whole
number of 128-row tiles), so a 16 x 1024 micro-batch runs 4 chunks of 4096 rows (3 would need 5462);
in fp32, 2688 rows. Extra memory: that buffer, the fp32 grad_weight accumulator, grad_hidden, and the
compute-dtype copies of weight and hidden when a cast is needed.

Targets. A target that is neither ignore_index nor in [0, V) is not checked on the host (that would
sync every call): the kernel clamps the index it loads from and makes that row's loss (and its
gradient) NaN, so the mean loss is NaN and the trainer's non-finite guard stops the run. With
SMOLLM_CHECK_TARGETS=1 in the environment (read at each call), the op checks on the host instead and
raises a ValueError naming the target, its row and the vocabulary range.
"""

import functools
import os
import warnings

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from smollm.kernels.utils import SUPPORTED_DTYPES, check_dtype

BLOCK_V = 4096
CHUNK_BYTES = 512 * 2 ** 20  # one chunk's (rows, V) logits buffer, in the compute dtype
TILE_ROWS = 128  # chunks are whole GEMM tiles of rows


def linear_cross_entropy_reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                   ignore_index: int = -100) -> torch.Tensor:
    # hidden (N, D), weight (V, D), targets (N,) -> mean loss over targets != ignore_index
    logits = hidden @ weight.t()  # (N, V)
    return F.cross_entropy(logits.float(), targets, ignore_index=ignore_index)


@triton.jit
def _ce_rows(LOGITS, stride, TARGETS, LOSS, N_VALID, V, ignore_index,
             COMPUTE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride
    target = tl.load(TARGETS + row)
    valid = target != ignore_index
    in_vocab = (target >= 0) & (target < V)
    # A target outside [0, V) (and not ignored) must not be read from: load column 0 instead and make
    # the row's loss NaN.
    safe = tl.where(valid & in_vocab, target, 0)
    cols = tl.arange(0, BLOCK_V)
    # Online log-sum-exp in fp32, whatever the logits' dtype.
    m = -float("inf")
    s = 0.0
    for off in range(0, V, BLOCK_V):
        x = tl.load(base + off + cols, mask=off + cols < V, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    x_target = tl.load(base + safe).to(tl.float32)
    loss = tl.where(in_vocab, lse - x_target, float("nan"))
    tl.store(LOSS + row, tl.where(valid, loss, 0.0))
    if COMPUTE_GRAD:
        # d(mean loss)/d logits = (softmax - onehot) / n_valid; zero for ignored rows, NaN for bad targets.
        scale = tl.where(in_vocab, 1.0 / tl.load(N_VALID).to(tl.float32), float("nan"))
        scale = tl.where(valid, scale, 0.0)
        for off in range(0, V, BLOCK_V):
            idx = off + cols
            mask = idx < V
            x = tl.load(base + idx, mask=mask, other=0.0).to(tl.float32)
            g = (tl.exp(x - lse) - tl.where(idx == safe, 1.0, 0.0)) * scale
            tl.store(base + idx, g.to(LOGITS.dtype.element_ty), mask=mask)


def budget_chunk_rows(n: int, v: int, itemsize: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows per chunk: the fewest equal chunks whose (rows, v) logits of `itemsize` bytes fit in
    chunk_bytes, rounded up to a multiple of TILE_ROWS, never more than n. The budget is floored to
    whole tiles first, so rounding up never exceeds it; a budget under one tile still gets one tile."""
    n = max(n, 1)
    fit = max(TILE_ROWS, chunk_bytes // (v * itemsize) // TILE_ROWS * TILE_ROWS)
    rows = triton.cdiv(n, triton.cdiv(n, fit))
    return min(triton.cdiv(rows, TILE_ROWS) * TILE_ROWS, n)


@functools.lru_cache
def _fp32_out_gemm_ok(device_type: str, index: int | None, dtype: torch.dtype) -> bool:
    """Whether torch.addmm(acc, a, b, out_dtype=fp32, beta=..., out=acc) works on this device for
    `dtype` a, b, as the op calls it: runs once on tiny tensors laid out as in the op, first with beta=0
    on an accumulator full of NaN (which must be ignored, as the first chunk starts from torch.empty),
    then with beta=1, and checks that acc (the `out`) holds a @ b + a @ b to fp32 accuracy (tighter
    than a `dtype` rounding of the product). False on any exception or mismatch."""
    try:
        g = torch.Generator().manual_seed(0)
        a, b = (torch.randn(shape, generator=g).to(dtype).float() for shape in ((48, 64), (48, 32)))
        want = 2 * (a.t() @ b)
        got = torch.full((64, 32), float("nan"), device=torch.device(device_type, index))
        a, b = a.to(got.device, dtype), b.to(got.device, dtype)
        for beta in (0, 1):
            ret = torch.addmm(got, a.t(), b, out_dtype=torch.float32, beta=beta, out=got)
        return (ret.data_ptr() == got.data_ptr() and got.dtype == torch.float32
                and bool(((got.cpu() - want).abs() <= 1e-4 * want.abs().max()).all()))
    except Exception:
        return False


@functools.lru_cache
def _warn_fallback(device_type: str, index: int | None, dtype: torch.dtype) -> None:
    warnings.warn(f"linear_cross_entropy: torch.addmm(..., out_dtype=torch.float32) failed its probe on "
                  f"{device_type}:{index} for {dtype}; grad_weight accumulates through the slower fallback "
                  f"(bench/gpu.sh's probe row measures what that costs)", RuntimeWarning, stacklevel=3)


def fp32_out_gemm(device: torch.device, dtype: torch.dtype) -> bool:
    if dtype == torch.float32 or (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        return False  # nothing to gain, or no probe (never while a CUDA graph is being captured)
    ok = _fp32_out_gemm_ok(device.type, device.index, dtype)
    if not ok and device.type == "cuda":  # expected on a CPU; on a GPU it costs speed: said once, not silently
        _warn_fallback(device.type, device.index, dtype)
    return ok


def accumulate_grad_weight(grad_weight: torch.Tensor, logits: torch.Tensor, h: torch.Tensor,
                           fp32_out: bool | None = None, first: bool = False) -> None:
    """grad_weight (V, D), fp32 += logits^T (V, C) @ h (C, D), in place; first: = instead of += (the
    accumulator is uninitialized: beta=0 ignores it, so no V x D memset). fp32_out=None: probe the device."""
    beta = 0 if first else 1
    if logits.dtype == grad_weight.dtype:
        grad_weight.addmm_(logits.t(), h, beta=beta)
    elif fp32_out if fp32_out is not None else fp32_out_gemm(logits.device, logits.dtype):
        torch.addmm(grad_weight, logits.t(), h, out_dtype=torch.float32, beta=beta, out=grad_weight)
    elif first:
        grad_weight.copy_(logits.t() @ h)
    else:
        grad_weight += (logits.t() @ h).float()


def _check_targets_enabled() -> bool:
    return os.environ.get("SMOLLM_CHECK_TARGETS", "0") not in ("", "0")


def _check(hidden, weight, targets, compute_dtype):
    check_dtype(hidden, "linear_cross_entropy: hidden")
    check_dtype(weight, "linear_cross_entropy: weight")
    if compute_dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"linear_cross_entropy: compute dtype {compute_dtype}; expected one of fp32, bf16, fp16")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy: hidden (N, D) and weight (V, D) expected, got "
                         f"{tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != (hidden.shape[0],) or targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"linear_cross_entropy: targets must be integer ({hidden.shape[0]},), got "
                         f"{targets.dtype} {tuple(targets.shape)}")


@torch.library.custom_op("smollm::linear_cross_entropy", mutates_args=())
def linear_cross_entropy_op(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                            compute_grad: bool, chunk_rows: int, chunk_bytes: int,
                            compute_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(hidden, weight, targets, compute_dtype)
    N, D = hidden.shape
    V = weight.shape[0]
    valid = targets != ignore_index
    if _check_targets_enabled():  # debug switch: a host sync
        bad = valid & ((targets < 0) | (targets >= V))
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"linear_cross_entropy: target {int(targets[i])} at row {i} is outside the "
                             f"vocabulary [0, {V}) and is not ignore_index ({ignore_index})")
    with torch.autocast(hidden.device.type, enabled=False):  # the dtypes below are the op's own
        h_all = hidden.to(compute_dtype).contiguous()  # one cast per call (none when already there)
        w = weight.to(compute_dtype).contiguous()
        targets = targets.contiguous()
        n_valid = valid.sum()  # stays on device: no host sync
        loss_rows = torch.empty(N, dtype=torch.float32, device=hidden.device)
        if compute_grad:
            grad_hidden = torch.empty(N, D, dtype=hidden.dtype, device=hidden.device)
            # fp32 accumulation across chunks, whatever the compute dtype; the first chunk overwrites it.
            grad_weight = torch.empty(V, D, dtype=torch.float32, device=weight.device)
        else:
            grad_hidden, grad_weight = hidden.new_empty(0), weight.new_empty(0)
        fp32_out = compute_grad and fp32_out_gemm(hidden.device, compute_dtype)
        chunk = chunk_rows if chunk_rows > 0 else budget_chunk_rows(N, V, compute_dtype.itemsize, chunk_bytes)
        chunk = min(chunk, max(N, 1))
        buffer = torch.empty(chunk, V, dtype=compute_dtype, device=hidden.device)  # one (C, V) buffer, reused
        logits = None
        for start in range(0, N, chunk):
            end = min(start + chunk, N)
            h = h_all[start:end]  # (C, D)
            logits = torch.mm(h, w.t(), out=buffer[:end - start])  # (C, V), in the compute dtype
            _ce_rows[(end - start,)](logits, logits.stride(0), targets[start:end], loss_rows[start:end], n_valid, V,
                                     ignore_index, COMPUTE_GRAD=compute_grad, BLOCK_V=BLOCK_V, num_warps=8)
            if compute_grad:  # the row kernel overwrote the logits with d loss / d logits
                if grad_hidden.dtype == compute_dtype:
                    torch.mm(logits, w, out=grad_hidden[start:end])  # (C, D)
                else:
                    grad_hidden[start:end] = logits @ w
                accumulate_grad_weight(grad_weight, logits, h, fp32_out, first=start == 0)
        if compute_grad and N == 0:
            grad_weight.zero_()  # no chunk wrote it
        del buffer, logits, h_all, w
        loss = loss_rows.sum() / n_valid  # nan when every target is ignored, as F.cross_entropy
    # An fp32 master weight gets the fp32 accumulator itself, no copy.
    return loss, grad_hidden, grad_weight.to(weight.dtype)


@linear_cross_entropy_op.register_fake
def _(hidden, weight, targets, ignore_index, compute_grad, chunk_rows, chunk_bytes, compute_dtype):
    loss = hidden.new_empty((), dtype=torch.float32)
    if not compute_grad:
        return loss, hidden.new_empty(0), weight.new_empty(0)
    return loss, torch.empty_like(hidden, memory_format=torch.contiguous_format), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    # Held on ctx rather than saved: backward hands them over and drops ctx's reference, so the
    # weight's AccumulateGrad can take the buffer as .grad instead of copying it (a saved tensor
    # keeps a second reference until the graph is freed, which forces a V x D copy at the peak).
    ctx.grads = [output[1], output[2]]
    # Only the loss is differentiable; without this, autograd would allocate zero "gradients" for
    # the two gradient outputs, as large as the gradients themselves.
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, _gh, _gw):
    if ctx.grads is None:
        raise RuntimeError("linear_cross_entropy: backward through the same graph twice is not supported")
    grad_hidden, grad_weight = ctx.grads
    ctx.grads = None
    if grad_hidden.numel() == 0 and grad_weight.numel() == 0:
        raise RuntimeError("linear_cross_entropy: backward called on a loss computed without gradients "
                           "(grad mode was off, or neither hidden nor weight required grad)")
    # In place: a scaled copy would double the gradient buffers at the peak.
    return grad_hidden.mul_(grad_loss), grad_weight.mul_(grad_loss), None, None, None, None, None, None


linear_cross_entropy_op.register_autograd(_backward, setup_context=_setup_context)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = -100, chunk_rows: int = 0, chunk_bytes: int | None = None) -> torch.Tensor:
    """hidden (N, D), weight (V, D), targets (N,) -> mean cross-entropy of hidden @ weight^T over
    targets != ignore_index, without materializing the (N, V) logits. The GEMMs run in autocast's
    dtype when autocast is on for hidden's device, else in hidden's dtype; the gradients come back in
    hidden's and weight's own dtypes. chunk_rows > 0 fixes the rows per chunk; else they come from
    chunk_bytes (default CHUNK_BYTES), the size of one chunk's logits."""
    device_type = hidden.device.type
    # Custom ops bypass autocast: pass its dtype, and the op casts once, inside (no autograd cast node).
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = hidden.dtype
    compute_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return linear_cross_entropy_op(hidden, weight, targets, ignore_index, compute_grad, chunk_rows,
                                   CHUNK_BYTES if chunk_bytes is None else chunk_bytes, compute_dtype)[0]
