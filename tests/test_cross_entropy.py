"""smollm/kernels/cross_entropy.py against the reference (full logits + F.cross_entropy) and against
Liger-Kernel's fused linear cross-entropy. fp32: 1e-5 (grad_weight, a sum over all rows in
another order: 1e-5 of its largest value). bf16 (inputs or autocast): conftest.assert_bf16_close."""

import warnings

import pytest
import torch

from smollm.kernels import cross_entropy as ce
from smollm.kernels.cross_entropy import (CHUNK_BYTES, accumulate_grad_weight, budget_chunk_rows, linear_cross_entropy,
                                          linear_cross_entropy_reference)

from conftest import DEVICE, assert_bf16_close, peak_extra_bytes


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


@pytest.mark.parametrize("bad", [10, 10 ** 6, -5])
def test_target_outside_vocab_gives_nan_without_a_check(bad, monkeypatch):
    """By default no host check: the row's loss is NaN (no out-of-bounds read), so the mean loss is."""
    monkeypatch.delenv("SMOLLM_CHECK_TARGETS", raising=False)
    hidden, weight, targets = _inputs(4, 8, 10, torch.float32)
    targets[2] = bad
    loss, dh, dw = _run(linear_cross_entropy, hidden, weight, targets)
    assert torch.isnan(loss) and loss.dtype == torch.float32
    assert torch.isnan(dh[2]).all() and torch.isnan(dw).all()  # the gradient of a NaN loss is NaN
    targets[2] = 3  # the same inputs with a valid target are finite
    assert torch.isfinite(_run(linear_cross_entropy, hidden, weight, targets)[0])


def test_target_outside_vocab_raises_with_check_targets(monkeypatch):
    monkeypatch.setenv("SMOLLM_CHECK_TARGETS", "1")
    hidden, weight, targets = _inputs(4, 8, 10, torch.float32)
    targets[2] = 10
    with pytest.raises(ValueError, match=r"target 10 at row 2 is outside the vocabulary \[0, 10\)"):
        linear_cross_entropy(hidden, weight, targets)
    targets[2] = -100  # ignored targets pass the check
    assert torch.isfinite(linear_cross_entropy(hidden, weight, targets))


def test_shape_mismatch():
    with pytest.raises(ValueError, match=r"hidden \(N, D\) and weight \(V, D\) expected"):
        linear_cross_entropy(torch.randn(4, 8, device=DEVICE), torch.randn(10, 9, device=DEVICE),
                             torch.zeros(4, dtype=torch.long, device=DEVICE))


def test_budget_chunk_rows():
    """The fewest equal chunks whose logits fit the budget, in whole 128-row tiles, capped at N."""
    # V = 49152, bf16: 512 MiB holds 5461 rows, 5376 in whole tiles: 16384 rows -> 4 chunks of 4096.
    assert budget_chunk_rows(16384, 49152, 2) == 4096
    assert budget_chunk_rows(8192, 49152, 2) == 4096
    assert budget_chunk_rows(5376, 49152, 2) == 5376 and budget_chunk_rows(5377, 49152, 2) == 2816
    assert budget_chunk_rows(16384, 49152, 4) == 2432  # fp32: 2688 rows fit; 7 chunks
    assert budget_chunk_rows(10, 49152, 2) == 10  # never more than N
    assert budget_chunk_rows(1000, 1000, 4, chunk_bytes=1) == 128  # at least one tile
    for n in (1, 127, 128, 129, 1000, 4097, 8192, 10000, 16384, 50000):
        for v, itemsize, budget in ((49152, 2, CHUNK_BYTES), (49152, 4, CHUNK_BYTES), (1000, 4, 2 ** 20)):
            rows = budget_chunk_rows(n, v, itemsize, budget)
            fit = budget // (v * itemsize) // 128 * 128
            assert rows == n or rows % 128 == 0, (n, v, rows)
            assert 0 < rows <= n and rows * v * itemsize <= budget, (n, v, rows)
            assert -(-n // rows) == -(-n // fit), (n, v, rows)  # as few chunks as the budget allows


def test_chunk_bytes_sets_the_chunks(monkeypatch):
    """A small chunk_bytes runs several chunks (counted at the row kernel's launches) and still matches."""
    launches = []
    kernel = ce._ce_rows

    class Counting:
        def __getitem__(self, grid):
            launches.append(grid[0])
            return kernel[grid]

    monkeypatch.setattr(ce, "_ce_rows", Counting())
    hidden, weight, targets = _inputs(300, 32, 1000, torch.float32, ignore=0.2)
    got = _run(linear_cross_entropy, hidden, weight, targets, chunk_bytes=128 * 1000 * 4)
    assert launches == [128, 128, 44]
    launches.clear()
    with torch.no_grad():
        linear_cross_entropy(hidden, weight, targets)  # the default budget: one chunk
    assert launches == [300]
    _assert_fp32(got, _run(linear_cross_entropy_reference, hidden, weight, targets))


def test_extra_memory_is_one_chunk_of_logits():
    """Loss + backward, measured: the op's extra memory is one (chunk, V) logits buffer plus the
    gradients it returns (grad_weight, accumulated in fp32, and grad_hidden), far below the (N, V)
    logits that the reference materializes (and more than once: their softmax and its gradient)."""
    N, D, V, chunk = 128, 16, 4096, 8  # one chunk's logits: 1/16 of the reference's
    hidden, weight, targets = _inputs(N, D, V, torch.float32, ignore=0.2)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()

    def step(fn, **kw):
        fn(h, w, targets, **kw).backward()

    if DEVICE.type == "cuda":  # warm-up: cuBLAS's workspace, allocated at the first GEMM, is not the op's
        for fn, kw in ((linear_cross_entropy, {"chunk_rows": chunk}), (linear_cross_entropy_reference, {})):
            step(fn, **kw)
    h.grad = w.grad = None  # freed before, not during, a measurement
    fused = peak_extra_bytes(lambda: step(linear_cross_entropy, chunk_rows=chunk))
    full_logits = N * V * 4
    # The buffer, grad_weight, grad_hidden, the per-row losses, and 64 KiB for scalars and rounding.
    budget = chunk * V * 4 + V * D * 4 + N * D * 4 + N * 4 + 2 ** 16
    assert fused <= budget, f"{fused} bytes at the peak, more than one chunk's logits and the gradients ({budget})"
    assert budget < full_logits / 4  # the sizes keep the two regimes far apart
    h.grad = w.grad = None
    reference = peak_extra_bytes(lambda: step(linear_cross_entropy_reference))
    assert reference >= 2 * full_logits, reference  # the measurement sees what the reference allocates


@pytest.mark.parametrize("hidden_dtype", [torch.float32, torch.bfloat16])
def test_fp32_master_weight_under_autocast(hidden_dtype):
    """bf16 autocast with an fp32 master weight: the op casts inside (no autograd cast node between the
    weight and the op) and hands back an fp32 grad_weight, within the bf16 budget of the fp32 truth."""
    hidden, weight, targets = _inputs(40, 64, 3001, torch.float32, ignore=0.2)
    h = hidden.to(hidden_dtype).requires_grad_()
    w = weight.clone().requires_grad_()
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        loss = linear_cross_entropy(h, w, targets, chunk_rows=16)
    nexts = [f for f, _ in loss.grad_fn.next_functions if f is not None]
    assert any(getattr(f, "variable", None) is w for f in nexts), [type(f).__name__ for f in nexts]
    assert any(getattr(f, "variable", None) is h for f in nexts)
    loss.backward()
    assert loss.dtype == torch.float32 and w.grad.dtype == torch.float32 and h.grad.dtype == hidden_dtype
    want = _run(linear_cross_entropy_reference, h.detach().float(), weight, targets)
    ref16 = _run(linear_cross_entropy_reference, h.detach().bfloat16(), weight.bfloat16(), targets)
    for name, g, t, r in zip(("loss", "grad_hidden", "grad_weight"), (loss, h.grad, w.grad), want, ref16):
        assert_bf16_close(g, t, r, name)
    # fp32 numbers would be within 1e-5: these are bf16 GEMMs, as autocast asks.
    assert (w.grad - want[2]).abs().max() > 1e-5 * want[2].abs().max()


def test_compile_fullgraph_under_autocast():
    """torch.compile(fullgraph=True) traces the op, with its dtype argument, under autocast."""
    hidden, weight, targets = _inputs(24, 32, 500, torch.float32)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    torch._dynamo.reset()
    fn = torch.compile(lambda h, w, t: linear_cross_entropy(h, w, t) * 2.0, fullgraph=True)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        loss = fn(h, w, targets)
    loss.backward()
    assert w.grad.dtype == torch.float32
    want = _run(lambda *a: linear_cross_entropy_reference(*a) * 2.0, hidden, weight, targets)
    ref16 = _run(lambda h, w, t: linear_cross_entropy_reference(h.bfloat16(), w.bfloat16(), t) * 2.0,
                 hidden, weight, targets)
    for name, g, t, r in zip(("loss", "grad_hidden", "grad_weight"), (loss, h.grad, w.grad), want, ref16):
        assert_bf16_close(g, t, r, name)


def test_fp32_out_gemm_probe():
    """The probe answers what the device does: on the CPU aten::addmm.dtype_out is missing (False, and
    nothing said); on CUDA a failed probe is no parity failure (the fallback is tested below) but a
    cost, so it is said once as a RuntimeWarning (and bench/gpu.sh reports it as its own row)."""
    index = DEVICE.index if DEVICE.type != "cuda" else torch.cuda.current_device()
    ok = ce._fp32_out_gemm_ok(DEVICE.type, index, torch.bfloat16)
    assert isinstance(ok, bool)
    if DEVICE.type == "cpu":
        assert ok is False
    ce._warn_fallback.cache_clear()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert ce.fp32_out_gemm(torch.device(DEVICE.type, index), torch.bfloat16) is ok
    fallback_said = [w for w in said if "failed its probe" in str(w.message)]
    assert len(fallback_said) == (DEVICE.type == "cuda" and not ok)
    assert ce.fp32_out_gemm(DEVICE, torch.float32) is False  # fp32 inputs need no fp32-out GEMM
    if DEVICE.type == "cpu":
        acc = torch.zeros(4, 3)
        with pytest.raises((NotImplementedError, RuntimeError)):
            torch.addmm(acc, torch.ones(4, 2, dtype=torch.bfloat16), torch.ones(2, 3, dtype=torch.bfloat16),
                        out_dtype=torch.float32, out=acc)


@pytest.mark.parametrize("path", ["fallback", "fp32_out"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_accumulate_grad_weight(dtype, path):
    """grad_weight (fp32) += logits^T @ h, in place, on each path, against the fp32 product of the same
    inputs. fp32 inputs: 1e-5. bf16, fallback: the product is rounded to bf16 once (2^-8 of its
    largest value); fp32-out: no rounding (1e-5)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(96, 300, generator=g).to(DEVICE, dtype)
    h = torch.randn(96, 40, generator=g).to(DEVICE, dtype)
    acc = torch.randn(300, 40, generator=g).to(DEVICE) * 10
    want = acc + logits.float().t() @ h.float()
    ptr = acc.data_ptr()
    fp32_out = path == "fp32_out"
    if fp32_out and dtype != torch.float32 and not ce.fp32_out_gemm(DEVICE, dtype):
        with pytest.raises((NotImplementedError, RuntimeError)):  # the path the probe turns off here
            accumulate_grad_weight(acc, logits, h, fp32_out=True)
        return
    accumulate_grad_weight(acc, logits, h, fp32_out=fp32_out)
    assert acc.data_ptr() == ptr and acc.dtype == torch.float32
    # first=True overwrites: an accumulator full of NaN (torch.empty's garbage) is ignored.
    first = torch.full_like(acc, float("nan"))
    accumulate_grad_weight(first, logits, h, fp32_out=fp32_out, first=True)
    assert not first.isnan().any()
    want_first = logits.float().t() @ h.float()
    product = (logits.float().t() @ h.float()).abs().max().item()
    tol = 2 ** -8 * product if (dtype == torch.bfloat16 and not fp32_out) else 1e-5 * product
    err = (acc - want).abs().max()
    assert err <= tol, (err, tol)
    if dtype == torch.bfloat16 and fp32_out:
        assert err <= 1e-5 * product  # tighter than one bf16 rounding
    assert (first - want_first).abs().max() <= tol


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
