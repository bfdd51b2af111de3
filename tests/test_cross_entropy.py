"""kernels/cross_entropy.py against the reference (full logits + F.cross_entropy) and against
Liger-Kernel's fused linear cross-entropy. fp32: 1e-5 (grad_weight, a sum over all rows in
another order: 1e-5 of its largest value). bf16: conftest.assert_bf16_close."""

import pytest
import torch

from kernels.cross_entropy import default_chunk_rows, linear_cross_entropy, linear_cross_entropy_reference

from conftest import DEVICE, assert_bf16_close


def _inputs(N, D, V, dtype, ignore=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, D, generator=g).to(DEVICE, dtype)
    weight = (torch.randn(V, D, generator=g) / D ** 0.5).to(DEVICE, dtype)
    targets = torch.randint(0, V, (N,), generator=g)
    targets[torch.rand(N, generator=g) < ignore] = -100
    return hidden, weight, targets.to(DEVICE)


def _run(fn, hidden, weight, targets, **kw):
    h = hidden.detach().requires_grad_()
    w = weight.detach().requires_grad_()
    loss = fn(h, w, targets, **kw)
    loss.backward()
    return loss, h.grad, w.grad


def _assert_fp32(got, want):
    (loss, dh, dw), (loss_ref, dh_ref, dw_ref) = got, want
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dh, dh_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dw, dw_ref, rtol=1e-5, atol=1e-5 * dw_ref.abs().max().item())


# (N, D, V, chunk_rows): the model's shape; one row; odd N; chunk not dividing N; V not a multiple of
# the kernel's vocab block; hidden size not a power of two.
CASES = [(64, 576, 49152, 0), (1, 576, 49152, 0), (37, 64, 5003, 16), (100, 96, 4097, 33), (9, 100, 1000, 4)]


@pytest.mark.parametrize("N,D,V,chunk", CASES)
@pytest.mark.parametrize("ignore", [0.0, 0.3])
def test_fp32(N, D, V, chunk, ignore):
    hidden, weight, targets = _inputs(N, D, V, torch.float32, ignore)
    if ignore and N > 1:
        targets[0] = -100  # at least one ignored
    _assert_fp32(_run(linear_cross_entropy, hidden, weight, targets, chunk_rows=chunk),
                 _run(linear_cross_entropy_reference, hidden, weight, targets))


@pytest.mark.parametrize("N,D,V,chunk", CASES[:3])
def test_bf16(N, D, V, chunk):
    hidden, weight, targets = _inputs(N, D, V, torch.bfloat16, ignore=0.2)
    got = _run(linear_cross_entropy, hidden, weight, targets, chunk_rows=chunk)
    want = _run(linear_cross_entropy_reference, hidden.float(), weight.float(), targets)
    ref16 = _run(linear_cross_entropy_reference, hidden, weight, targets)
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == torch.bfloat16
    for name, g, t, r in zip(("loss", "grad_hidden", "grad_weight"), got, want, ref16):
        assert_bf16_close(g, t, r, name)


def test_all_targets_ignored():
    hidden, weight, targets = _inputs(8, 32, 100, torch.float32)
    targets[:] = -100
    loss, dh, dw = _run(linear_cross_entropy, hidden, weight, targets)
    loss_ref, dh_ref, dw_ref = _run(linear_cross_entropy_reference, hidden, weight, targets)
    assert torch.isnan(loss) and torch.isnan(loss_ref)  # as F.cross_entropy: 0 / 0
    assert torch.equal(dh, dh_ref) and torch.equal(dw, dw_ref) and not dh.any() and not dw.any()


def test_custom_ignore_index():
    hidden, weight, targets = _inputs(16, 32, 100, torch.float32)
    targets[::3] = 7
    _assert_fp32(_run(linear_cross_entropy, hidden, weight, targets, ignore_index=7),
                 _run(linear_cross_entropy_reference, hidden, weight, targets, ignore_index=7))


def test_scaled_upstream_gradient():
    hidden, weight, targets = _inputs(16, 32, 100, torch.float32)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    (linear_cross_entropy(h, w, targets) * 3.5).backward()
    hr, wr = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    (linear_cross_entropy_reference(hr, wr, targets) * 3.5).backward()
    torch.testing.assert_close(h.grad, hr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad, wr.grad, rtol=1e-5, atol=1e-5)


def test_tied_weight_gets_both_gradients():
    """The embedding and the LM head share one weight: it must receive the sum of both gradients."""
    hidden, weight, targets = _inputs(12, 32, 100, torch.float32)
    ids = torch.randint(0, 100, (12,), device=DEVICE)
    grads = []
    for fn in (linear_cross_entropy, linear_cross_entropy_reference):
        w = weight.clone().requires_grad_()
        fn(torch.nn.functional.embedding(ids, w) + hidden, w, targets).backward()
        grads.append(w.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)


def test_no_grad_computes_loss_only():
    hidden, weight, targets = _inputs(10, 32, 100, torch.float32)
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, targets)
    torch.testing.assert_close(loss, linear_cross_entropy_reference(hidden, weight, targets), rtol=1e-5, atol=1e-5)


def test_non_contiguous_hidden_is_handled():
    hidden, weight, targets = _inputs(32, 24, 100, torch.float32)
    strided = hidden.t().contiguous().t()  # same values, column-major
    assert not strided.is_contiguous()
    _assert_fp32(_run(linear_cross_entropy, strided, weight, targets),
                 _run(linear_cross_entropy_reference, hidden, weight, targets))


def test_target_outside_vocab():
    hidden, weight, targets = _inputs(4, 8, 10, torch.float32)
    targets[2] = 10
    with pytest.raises(ValueError, match=r"target 10 at row 2 is outside the vocabulary \[0, 10\)"):
        linear_cross_entropy(hidden, weight, targets)


def test_shape_mismatch():
    with pytest.raises(ValueError, match=r"hidden \(N, D\) and weight \(V, D\) expected"):
        linear_cross_entropy(torch.randn(4, 8, device=DEVICE), torch.randn(10, 9, device=DEVICE),
                             torch.zeros(4, dtype=torch.long, device=DEVICE))


def test_default_chunk_bounds_memory():
    # About N * D logits per chunk (the size of hidden), so extra memory stays O(chunk x V).
    assert default_chunk_rows(8192, 49152, 576) == 128
    assert default_chunk_rows(16384, 49152, 576) == 256
    assert default_chunk_rows(10, 49152, 576) == 64


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_against_liger_kernel(dtype):
    from liger_kernel.ops import fused_linear_cross_entropy as liger  # a dev dependency: must be there

    hidden, weight, targets = _inputs(48, 64, 3001, dtype, ignore=0.2)
    ours = _run(linear_cross_entropy, hidden, weight, targets)

    def liger_fn(h, w, t):
        out = liger.LigerFusedLinearCrossEntropyFunction.apply(h, w, t, None, None, -100)
        return out[0] if isinstance(out, tuple) else out

    theirs = _run(liger_fn, hidden, weight, targets)
    want = _run(linear_cross_entropy_reference, hidden.float(), weight.float(), targets)
    for name, o, t, w in zip(("loss", "grad_hidden", "grad_weight"), ours, theirs, want):
        if dtype == torch.float32:
            torch.testing.assert_close(o, t.to(o.dtype), rtol=1e-5, atol=1e-5 * w.abs().max().item())
        else:  # both against the fp32 truth: ours no further from it than Liger (plus one bf16 ulp)
            assert_bf16_close(o, w, t, name)


def test_second_backward_through_same_graph_is_refused():
    hidden, weight, targets = _inputs(8, 16, 50, torch.float32)
    h = hidden.requires_grad_()
    loss = linear_cross_entropy(h, weight, targets)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward through the same graph twice is not supported"):
        loss.backward()
