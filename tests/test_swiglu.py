"""kernels/swiglu.py against its reference. fp32: 1e-5. bf16: conftest.assert_bf16_close."""

import pytest
import torch

from kernels.swiglu import swiglu, swiglu_reference

from conftest import DEVICE, assert_bf16_close

SHAPES = [(1,), (1, 1536), (2, 64, 1536), (5, 1001), (3, 4097)]


def _run(fn, gate, up, dy):
    gate = gate.detach().requires_grad_()
    up = up.detach().requires_grad_()
    y = fn(gate, up)
    y.backward(dy)
    return y, gate.grad, up.grad


def _inputs(shape, dtype):
    g = torch.Generator().manual_seed(0)
    return [(3 * torch.randn(shape, generator=g)).to(DEVICE, dtype) for _ in range(3)]


@pytest.mark.parametrize("shape", SHAPES)
def test_fp32(shape):
    gate, up, dy = _inputs(shape, torch.float32)
    for got, want in zip(_run(swiglu, gate, up, dy), _run(swiglu_reference, gate, up, dy)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_bf16(shape):
    gate, up, dy = _inputs(shape, torch.bfloat16)
    got = _run(swiglu, gate, up, dy)
    want = _run(swiglu_reference, gate.float(), up.float(), dy.float())
    ref16 = _run(swiglu_reference, gate, up, dy)
    for name, g, t, r in zip(("y", "d_gate", "d_up"), got, want, ref16):
        assert g.dtype == torch.bfloat16
        assert_bf16_close(g, t, r, name)


def test_non_contiguous_inputs_are_handled():
    gate, up, dy = _inputs((64, 48), torch.float32)
    gate, up, dy = gate.t(), up.t(), dy.t()  # (48, 64), column-major
    for got, want in zip(_run(swiglu, gate, up, dy), _run(swiglu_reference, gate, up, dy)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_shape_mismatch():
    with pytest.raises(ValueError, match=r"swiglu: gate has shape \(2, 8\) but up has \(2, 9\)"):
        swiglu(torch.randn(2, 8, device=DEVICE), torch.randn(2, 9, device=DEVICE))
