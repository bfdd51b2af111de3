"""smollm/kernels/swiglu.py against its reference. fp32: 1e-5. bf16: conftest.assert_bf16_close."""

import importlib

import pytest
import torch

from smollm.kernels.swiglu import swiglu, swiglu_packed, swiglu_packed_reference, swiglu_reference

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


# ---- swiglu_packed: the two halves of one fused gate-up projection, read in place ----

swiglu_module = importlib.import_module("smollm.kernels.swiglu")  # `smollm.kernels.swiglu` the module, for the spies

PACKED_SHAPES = [(1, 2), (1, 3072), (2, 64, 3072), (5, 2002), (3, 8194)]  # (..., 2F); F = 1536 in the model


class _Spy:
    """Stands in for a @triton.jit kernel: records the data pointers (and other arguments) of each launch,
    then launches."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append([a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args])
            return self.kernel[grid](*args, **kwargs)
        return launch


def _run_packed(fn, gate_up, dy):
    gate_up = gate_up.detach().requires_grad_()
    y = fn(gate_up)
    y.backward(dy)
    return y, gate_up.grad


def _packed_inputs(shape, dtype):
    g = torch.Generator().manual_seed(0)
    gate_up = (3 * torch.randn(shape, generator=g)).to(DEVICE, dtype)
    dy = (3 * torch.randn(*shape[:-1], shape[-1] // 2, generator=g)).to(DEVICE, dtype)
    return gate_up, dy


@pytest.mark.parametrize("shape", PACKED_SHAPES)
def test_packed_fp32(shape):
    gate_up, dy = _packed_inputs(shape, torch.float32)
    (y, d), (y_ref, d_ref) = _run_packed(swiglu_packed, gate_up, dy), _run_packed(swiglu_packed_reference, gate_up, dy)
    assert y.shape == (*shape[:-1], shape[-1] // 2) and d.shape == shape
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d, d_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", PACKED_SHAPES)
def test_packed_bf16(shape):
    gate_up, dy = _packed_inputs(shape, torch.bfloat16)
    got = _run_packed(swiglu_packed, gate_up, dy)
    want = _run_packed(swiglu_packed_reference, gate_up.float(), dy.float())
    ref16 = _run_packed(swiglu_packed_reference, gate_up, dy)
    for name, g, t, r in zip(("y", "d_gate_up"), got, want, ref16):
        assert g.dtype == torch.bfloat16
        assert_bf16_close(g, t, r, name)


@pytest.mark.parametrize("wider", [False, True])
def test_packed_reads_halves_in_place_and_writes_one_gradient(monkeypatch, wider):
    """The kernels read gate and up where they lie in gate_up (also when gate_up is itself a row-strided
    view), and backward writes both halves of ONE (..., 2F) gradient: the tensor autograd passes on,
    with nothing left to concatenate."""
    fwd, bwd = _Spy(swiglu_module._swiglu_fwd), _Spy(swiglu_module._swiglu_bwd)
    monkeypatch.setattr(swiglu_module, "_swiglu_fwd", fwd)
    monkeypatch.setattr(swiglu_module, "_swiglu_bwd", bwd)
    B, T, F = 2, 5, 96
    base = torch.randn(B, T, 3 * F if wider else 2 * F, device=DEVICE, requires_grad=True)
    gate_up = base[..., :2 * F]  # a non-leaf: its gradient is what backward returned
    assert gate_up.is_contiguous() != wider
    grads = []
    gate_up.register_hook(grads.append)
    dy = torch.randn(B, T, F, device=DEVICE)
    y = swiglu_packed(gate_up)
    y.backward(dy)
    e = gate_up.element_size()
    ptr, row = gate_up.data_ptr(), gate_up.stride(1)
    # _swiglu_fwd(G, U, Y, stride_g, stride_u, stride_y, n_cols)
    [(g_ptr, u_ptr, _, stride_g, stride_u, _, n_cols)] = fwd.launches
    assert (g_ptr, u_ptr, stride_g, stride_u, n_cols) == (ptr, ptr + F * e, row, row, F)
    # _swiglu_bwd(DY, G, U, DG, DU, stride_dy, stride_g, stride_u, stride_dg, stride_du, n_cols)
    [(_, g_ptr, u_ptr, dg_ptr, du_ptr, *_)] = bwd.launches
    [grad] = grads
    assert (g_ptr, u_ptr) == (ptr, ptr + F * e)
    assert grad.shape == (B, T, 2 * F) and grad.is_contiguous()
    assert (dg_ptr, du_ptr) == (grad.data_ptr(), grad.data_ptr() + F * e)
    want_y, want_grad = _run_packed(swiglu_packed_reference, gate_up, dy)
    torch.testing.assert_close(y, want_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_strided_views_are_read_in_place(monkeypatch, dtype):
    """swiglu(gate, up) on the halves of one projection (row-strided views): no copy, same numbers as
    swiglu_packed on the whole."""
    fwd = _Spy(swiglu_module._swiglu_fwd)
    monkeypatch.setattr(swiglu_module, "_swiglu_fwd", fwd)
    gate_up, dy = _packed_inputs((3, 7, 2 * 100), dtype)
    gate, up = gate_up[..., :100], gate_up[..., 100:]
    assert not gate.is_contiguous() and not up.is_contiguous()
    y, d_gate, d_up = _run(swiglu, gate, up, dy)
    e = gate_up.element_size()
    assert fwd.launches[0][:2] == [gate_up.data_ptr(), gate_up.data_ptr() + 100 * e]
    y_packed, d_packed = _run_packed(swiglu_packed, gate_up, dy)
    assert torch.equal(y, y_packed)
    assert torch.equal(torch.cat([d_gate, d_up], -1), d_packed)
    if dtype == torch.float32:
        for got, want in zip((y, d_gate, d_up), _run(swiglu_reference, gate, up, dy)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_packed_odd_width():
    with pytest.raises(ValueError, match=r"swiglu_packed: gate_up's last dimension must be even, got \(2, 7\)"):
        swiglu_packed(torch.randn(2, 7, device=DEVICE))
