"""kernels/rmsnorm.py against its reference. fp32: 1e-5 (dW, a sum over all rows in another order:
1e-5 of its largest value). bf16: conftest.assert_bf16_close."""

import pytest
import torch

from kernels.rmsnorm import rms_norm, rms_norm_reference

from conftest import DEVICE, assert_bf16_close

SHAPES = [(1, 576), (7, 576), (2, 1024, 576), (5, 100), (3, 1000), (2, 3, 4096)]


def _run(fn, x, w, dy):
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    y = fn(x, w, 1e-5)
    y.backward(dy)
    return y, x.grad, w.grad


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(DEVICE, dtype)
    w = (1 + 0.1 * torch.randn(shape[-1], generator=g)).to(DEVICE, dtype)
    dy = torch.randn(shape, generator=g).to(DEVICE, dtype)
    return x, w, dy


@pytest.mark.parametrize("shape", SHAPES)
def test_fp32(shape):
    x, w, dy = _inputs(shape, torch.float32)
    (y, dx, dw), (y_ref, dx_ref, dw_ref) = _run(rms_norm, x, w, dy), _run(rms_norm_reference, x, w, dy)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dw, dw_ref, rtol=1e-5, atol=1e-5 * dw_ref.abs().max().item())


@pytest.mark.parametrize("shape", SHAPES)
def test_bf16(shape):
    x, w, dy = _inputs(shape, torch.bfloat16)
    got = _run(rms_norm, x, w, dy)
    want = _run(rms_norm_reference, x.float(), w.float(), dy.float())
    ref16 = _run(rms_norm_reference, x, w, dy)
    assert got[0].dtype == got[1].dtype == got[2].dtype == torch.bfloat16
    for name, g, t, r in zip(("y", "dx", "dw"), got, want, ref16):
        assert_bf16_close(g, t, r, name)


def test_non_contiguous_input_is_handled():
    x, w, dy = _inputs((6, 2 * 576), torch.float32)
    xs, w = x[:, ::2], w[:576]  # last-dim stride 2
    assert not xs.is_contiguous()
    for got, want in zip(_run(rms_norm, xs, w, dy[:, ::2]), _run(rms_norm_reference, xs.contiguous(), w, dy[:, ::2])):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bad_weight_shape():
    with pytest.raises(ValueError, match=r"rms_norm: weight has shape \(575,\), expected \(576,\)"):
        rms_norm(torch.randn(2, 576, device=DEVICE), torch.ones(575, device=DEVICE))


def test_bad_dtype():
    with pytest.raises(TypeError, match="rms_norm: x has dtype torch.int64"):
        rms_norm(torch.ones(2, 8, dtype=torch.long, device=DEVICE), torch.ones(8, device=DEVICE))
