"""Fused linear (LM head) + cross-entropy, chunked over rows, so the full (N, V) logits never exist.

Per chunk of rows: logits = h @ W^T (a GEMM), then one Triton program per row does an online
log-sum-exp, the loss, and overwrites the logits in place with their gradient; two more GEMMs turn
that at once into the chunk's grad_hidden and add it to grad_weight (fp32). Extra memory is
O(chunk x V) plus the gradient buffers. The gradients are computed in the forward (the loss is
always the graph's last op); backward only scales them by the incoming gradient, in place, and hands
them over, so backward through the same graph twice (retain_graph) is refused.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.utils import check_dtype

BLOCK_V = 4096


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
    target = tl.where(valid, target, 0)
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
    x_target = tl.load(base + target).to(tl.float32)
    tl.store(LOSS + row, tl.where(valid, lse - x_target, 0.0))
    if COMPUTE_GRAD:
        # d(mean loss)/d logits = (softmax - onehot) / n_valid; zero for ignored rows.
        scale = tl.where(valid, 1.0 / tl.load(N_VALID).to(tl.float32), 0.0)
        for off in range(0, V, BLOCK_V):
            idx = off + cols
            mask = idx < V
            x = tl.load(base + idx, mask=mask, other=0.0).to(tl.float32)
            g = (tl.exp(x - lse) - tl.where(idx == target, 1.0, 0.0)) * scale
            tl.store(base + idx, g.to(LOGITS.dtype.element_ty), mask=mask)


def default_chunk_rows(n: int, v: int, d: int) -> int:
    # Chunk logits about the size of hidden itself (n * d values), as Liger-Kernel does; at least 64
    # rows so each GEMM stays efficient.
    return max(64, triton.next_power_of_2(triton.cdiv(n, triton.cdiv(v, d))))


def _check(hidden, weight, targets):
    check_dtype(hidden, "linear_cross_entropy: hidden")
    check_dtype(weight, "linear_cross_entropy: weight")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy: hidden (N, D) and weight (V, D) expected, got "
                         f"{tuple(hidden.shape)} and {tuple(weight.shape)}")
    if hidden.dtype != weight.dtype:
        raise TypeError(f"linear_cross_entropy: hidden is {hidden.dtype} but weight is {weight.dtype}")
    if targets.shape != (hidden.shape[0],) or targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"linear_cross_entropy: targets must be integer ({hidden.shape[0]},), got "
                         f"{targets.dtype} {tuple(targets.shape)}")


@torch.library.custom_op("smollm::linear_cross_entropy", mutates_args=())
def linear_cross_entropy_op(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                            compute_grad: bool, chunk_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(hidden, weight, targets)
    N, D = hidden.shape
    V = weight.shape[0]
    valid = targets != ignore_index
    bad = valid & ((targets < 0) | (targets >= V))
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"linear_cross_entropy: target {int(targets[i])} at row {i} is outside the "
                         f"vocabulary [0, {V}) and is not ignore_index ({ignore_index})")
    hidden = hidden.contiguous()
    weight = weight.contiguous()
    targets = targets.contiguous()
    n_valid = valid.sum()  # stays on device: no host sync
    loss_rows = torch.empty(N, dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if compute_grad else hidden.new_empty(0)
    # fp32 accumulation across chunks, whatever the input dtype.
    grad_weight = torch.zeros(V, D, dtype=torch.float32, device=weight.device) if compute_grad else weight.new_empty(0)
    chunk = min(chunk_rows if chunk_rows > 0 else default_chunk_rows(N, V, D), max(N, 1))
    buffer = torch.empty(chunk, V, dtype=hidden.dtype, device=hidden.device)  # one (C, V) buffer, reused
    for start in range(0, N, chunk):
        end = min(start + chunk, N)
        h = hidden[start:end]  # (C, D)
        logits = torch.mm(h, weight.t(), out=buffer[:end - start])  # (C, V), in the inputs' dtype
        _ce_rows[(end - start,)](logits, logits.stride(0), targets[start:end], loss_rows[start:end], n_valid, V,
                                 ignore_index, COMPUTE_GRAD=compute_grad, BLOCK_V=BLOCK_V, num_warps=8)
        if compute_grad:  # logits now hold d loss / d logits
            torch.mm(logits, weight, out=grad_hidden[start:end])  # (C, D)
            if grad_weight.dtype == logits.dtype:
                grad_weight.addmm_(logits.t(), h)  # (V, D), in place: no V x D temporary
            else:
                grad_weight += (logits.t() @ h).float()
    del buffer, logits
    loss = loss_rows.sum() / n_valid  # nan when every target is ignored, as F.cross_entropy
    return loss, grad_hidden, grad_weight.to(weight.dtype)


@linear_cross_entropy_op.register_fake
def _(hidden, weight, targets, ignore_index, compute_grad, chunk_rows):
    loss = hidden.new_empty((), dtype=torch.float32)
    if not compute_grad:
        return loss, hidden.new_empty(0), weight.new_empty(0)
    return loss, torch.empty_like(hidden), torch.empty_like(weight)


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
    return grad_hidden.mul_(grad_loss), grad_weight.mul_(grad_loss), None, None, None, None


linear_cross_entropy_op.register_autograd(_backward, setup_context=_setup_context)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = -100, chunk_rows: int = 0) -> torch.Tensor:
    """hidden (N, D), weight (V, D), targets (N,) -> mean cross-entropy of hidden @ weight^T over
    targets != ignore_index, without materializing the (N, V) logits. chunk_rows=0 picks a size."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):  # custom ops bypass autocast: apply it here
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    elif weight.dtype != hidden.dtype:
        weight = weight.to(hidden.dtype)
    compute_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return linear_cross_entropy_op(hidden, weight, targets, ignore_index, compute_grad, chunk_rows)[0]
