"""smollm/kernels/rope.py against its reference (Hugging Face rotate_half). fp32: 1e-5. bf16:
conftest.assert_bf16_close."""

import importlib

import pytest
import torch

from smollm.kernels.rope import rope, rope_reference, rope_tables

from conftest import DEVICE, assert_bf16_close

COS, SIN = rope_tables(64, 2048, 10000.0)
# (B, T, Hq, Hkv, Dh)
SHAPES = [(1, 1, 9, 3, 64), (2, 16, 9, 3, 64), (3, 7, 4, 2, 32), (1, 33, 1, 1, 64), (2, 5, 8, 8, 16)]


def _tables(B, T, D, offset=0, per_batch=False):
    cos, sin = rope_tables(D, 2048, 10000.0)
    if per_batch:  # a different start position per sequence: decoding at position p
        pos = torch.arange(T)[None, :] + torch.tensor([offset + 100 * b for b in range(B)])[:, None]  # (B, T)
    else:
        pos = torch.arange(offset, offset + T)
    return cos[pos].to(DEVICE), sin[pos].to(DEVICE)


def _run(fn, q, k, cos, sin, dq, dk):
    q = q.detach().requires_grad_()
    k = k.detach().requires_grad_()
    qo, ko = fn(q, k, cos, sin)
    ((qo * dq).sum() + (ko * dk).sum()).backward()
    return qo, ko, q.grad, k.grad


def _inputs(B, T, Hq, Hkv, D, dtype):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g).to(DEVICE, dtype) for s in ((B, T, Hq, D), (B, T, Hkv, D), (B, T, Hq, D), (B, T, Hkv, D))]


@pytest.mark.parametrize("per_batch", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_fp32(shape, per_batch):
    B, T, Hq, Hkv, D = shape
    q, k, dq, dk = _inputs(*shape, torch.float32)
    cos, sin = _tables(B, T, D, offset=5, per_batch=per_batch)
    for got, want in zip(_run(rope, q, k, cos, sin, dq, dk), _run(rope_reference, q, k, cos, sin, dq, dk)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_bf16(shape):
    B, T, Hq, Hkv, D = shape
    q, k, dq, dk = _inputs(*shape, torch.bfloat16)
    cos, sin = _tables(B, T, D, offset=1000)
    got = _run(rope, q, k, cos, sin, dq, dk)
    want = _run(rope_reference, q.float(), k.float(), cos, sin, dq.float(), dk.float())
    ref16 = _run(rope_reference, q, k, cos, sin, dq, dk)
    for name, g, t, r in zip(("q", "k", "dq", "dk"), got, want, ref16):
        assert g.dtype == torch.bfloat16
        assert_bf16_close(g, t, r, name)


def test_projection_views_are_handled():
    """q and k as views into one fused qkv projection: strided along T and H, unit stride in Dh."""
    B, T, Hq, Hkv, D = 2, 6, 9, 3, 64
    qkv = torch.randn(B, T, (Hq + 2 * Hkv) * D, device=DEVICE)
    q = qkv[..., :Hq * D].view(B, T, Hq, D)
    k = qkv[..., Hq * D:(Hq + Hkv) * D].view(B, T, Hkv, D)
    assert not q.is_contiguous() and not k.is_contiguous()
    _, _, dq, dk = _inputs(B, T, Hq, Hkv, D, torch.float32)
    cos, sin = _tables(B, T, D)
    for got, want in zip(_run(rope, q, k, cos, sin, dq, dk), _run(rope_reference, q, k, cos, sin, dq, dk)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


class _Spy:
    """Stands in for a @triton.jit kernel: records the data pointers of each launch's tensors, then launches."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append([a.data_ptr() for a in args if isinstance(a, torch.Tensor)])
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_qkv_split_views(monkeypatch, dtype):
    """The model's q and k: qkv.view(B, T, 15, 64).split([9, 3, 3], dim=2) of one fused projection. rope
    reads them in place (the kernel gets the views' own memory, not copies) and gives exactly what it
    gives on contiguous copies, forward and backward (into qkv's q and k heads; none into v)."""
    rope_module = importlib.import_module("smollm.kernels.rope")
    spy = _Spy(rope_module._rope_kernel)
    monkeypatch.setattr(rope_module, "_rope_kernel", spy)
    B, T, Hq, Hkv, D = 2, 6, 9, 3, 64
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, T, (Hq + 2 * Hkv) * D, generator=g).to(DEVICE, dtype).requires_grad_()
    q, k, v = qkv.view(B, T, Hq + 2 * Hkv, D).split([Hq, Hkv, Hkv], dim=2)
    assert not q.is_contiguous() and not k.is_contiguous()
    _, _, dq, dk = _inputs(B, T, Hq, Hkv, D, dtype)
    cos, sin = _tables(B, T, D, offset=3)
    qo, ko = rope(q, k, cos, sin)
    assert spy.launches[0][:2] == [q.data_ptr(), k.data_ptr()]
    ((qo * dq).sum() + (ko * dk).sum()).backward()
    want = _run(rope, q.detach().contiguous(), k.detach().contiguous(), cos, sin, dq, dk)
    grad = qkv.grad.view(B, T, Hq + 2 * Hkv, D)
    for name, got, w in zip(("q", "k", "dq", "dk"), (qo, ko, grad[:, :, :Hq], grad[:, :, Hq:Hq + Hkv]), want):
        assert torch.equal(got, w), name
    assert not grad[:, :, Hq + Hkv:].any()


def test_transposed_head_dim_is_handled():
    q = torch.randn(1, 4, 64, 2, device=DEVICE).transpose(-1, -2)  # Dh stride 2
    k = torch.randn(1, 4, 64, 1, device=DEVICE).transpose(-1, -2)
    cos, sin = _tables(1, 4, 64)
    for got, want in zip(rope(q, k, cos, sin), rope_reference(q, k, cos, sin)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_inverse():
    q, k, _, _ = _inputs(2, 8, 9, 3, 64, torch.float32)
    cos, sin = _tables(2, 8, 64)
    qo, ko = rope(q, k, cos, sin)
    qb, kb = rope(qo, ko, cos, -sin)  # rotation by -theta undoes it
    torch.testing.assert_close(qb, q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kb, k, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("q_shape,k_shape,cos_shape,msg", [
    ((2, 4, 9, 64), (2, 5, 3, 64), (4, 64), "does not match q"),
    ((2, 4, 9, 64), (2, 4, 3, 64), (5, 64), "cos/sin must be"),
    ((2, 4, 9, 64), (2, 4, 3, 64), (3, 4, 64), "cos/sin must be"),
    ((2, 4, 576), (2, 4, 192), (4, 64), r"must be \(B, T, H, Dh\)"),
    ((1, 2, 2, 48), (1, 2, 2, 48), (2, 48), "head_dim must be a power of two"),
])
def test_bad_shapes(q_shape, k_shape, cos_shape, msg):
    with pytest.raises(ValueError, match=msg):
        rope(*(torch.randn(s, device=DEVICE) for s in (q_shape, k_shape, cos_shape, cos_shape)))
