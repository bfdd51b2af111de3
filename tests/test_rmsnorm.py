"""smollm/kernels/rmsnorm.py against its reference. fp32: 1e-5 (dW, a sum over all rows in another order:
1e-5 of its largest value). bf16: conftest.assert_bf16_close; a bf16 y written under autocast from fp32
inputs: the reference's fp32 y rounded once (_assert_one_rounding)."""

import importlib

import pytest
import torch

from smollm.kernels.rmsnorm import add_rms_norm, add_rms_norm_reference, rms_norm, rms_norm_reference

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


# ---- add_rms_norm: residual = x + delta, y = rms_norm(residual) in one kernel each way ----

rmsnorm_module = importlib.import_module("smollm.kernels.rmsnorm")  # `smollm.kernels.rmsnorm` the module, for the spies

# Odd row counts, D not a power of two, and the model's width.
ADD_SHAPES = [(1, 576), (7, 576), (2, 33, 576), (5, 100), (3, 1000)]


class _Spy:
    """Stands in for a @triton.jit kernel: records each launch's keyword arguments, then launches."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(kwargs)
            return self.kernel[grid](*args, **kwargs)
        return launch


def _msg(name):
    return lambda m: f"{name}: {m}"


def _run_add(fn, x, delta, w, d_res, dy, autocast=False):
    """(residual, y, dx, d_delta, dw); d_res None: the new residual is unused (the final norm)."""
    x, delta, w = (t.detach().requires_grad_() for t in (x, delta, w))
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=autocast):
        res, y = fn(x, delta, w, 1e-5)
    outs, grads = [y], [dy.to(y.dtype)]
    if d_res is not None:
        outs.append(res)
        grads.append(d_res.to(res.dtype))
    torch.autograd.backward(outs, grads)
    return res, y, x.grad, delta.grad, w.grad


def _add_inputs(shape, x_dtype, delta_dtype, w_dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, delta, d_res, dy = (torch.randn(shape, generator=g) for _ in range(4))
    w = 1 + 0.1 * torch.randn(shape[-1], generator=g)
    return x.to(DEVICE, x_dtype), delta.to(DEVICE, delta_dtype), w.to(DEVICE, w_dtype), d_res.to(DEVICE), dy.to(DEVICE)


def _assert_one_rounding(got, want32, what):
    """got (bf16) is the fp32 value want32 rounded once to bf16: to nearest on a GPU (half an ulp), while
    Triton's interpreter truncates its fp32 -> bf16 casts (under one ulp). Plus 2^-20 of the largest value
    for fp32's own rounding: ours and the reference sum in different orders."""
    assert got.dtype == torch.bfloat16, f"{what}: dtype {got.dtype}"
    want32 = want32.float()
    ulp = torch.ldexp(torch.ones_like(want32), torch.frexp(want32).exponent - 8)  # bf16: 8 significant bits
    limit = (0.5 if DEVICE.type == "cuda" else 1.0) * ulp + 2 ** -20 * want32.abs().max()
    err = (got.float() - want32).abs()
    assert (err <= limit).all(), f"{what}: {(err / ulp).max().item():.3g} bf16 ulps from the fp32 value"


@pytest.mark.parametrize("shape", ADD_SHAPES)
def test_add_fp32(shape):
    x, delta, w, d_res, dy = _add_inputs(shape, torch.float32, torch.float32)
    got = _run_add(add_rms_norm, x, delta, w, d_res, dy)
    want = _run_add(add_rms_norm_reference, x, delta, w, d_res, dy)
    assert [t.dtype for t in got] == [torch.float32] * 5
    for name, g, t in zip(("residual", "y", "dx", "d_delta"), got, want):
        torch.testing.assert_close(g, t, rtol=1e-5, atol=1e-5, msg=_msg(name))
    torch.testing.assert_close(got[4], want[4], rtol=1e-5, atol=1e-5 * want[4].abs().max().item())


@pytest.mark.parametrize("shape", ADD_SHAPES)
def test_add_bf16(shape):
    """A pure bf16 model: x, delta, weight and both gradients bf16; the residual rounded to bf16 before
    it is normalized, as the reference's `x + delta` does."""
    x, delta, w, d_res, dy = _add_inputs(shape, torch.bfloat16, torch.bfloat16, torch.bfloat16)
    d_res, dy = d_res.bfloat16(), dy.bfloat16()
    got = _run_add(add_rms_norm, x, delta, w, d_res, dy)
    want = _run_add(add_rms_norm_reference, x.float(), delta.float(), w.float(), d_res.float(), dy.float())
    ref16 = _run_add(add_rms_norm_reference, x, delta, w, d_res, dy)
    for name, g, t, r in zip(("residual", "y", "dx", "d_delta", "dw"), got, want, ref16):
        assert g.dtype == torch.bfloat16, name
        assert_bf16_close(g, t, r, name)


@pytest.mark.parametrize("shape", ADD_SHAPES)
def test_add_mixed_under_autocast(shape):
    """The model under bf16 autocast: an fp32 residual stream plus a bf16 branch output. The residual
    stays fp32, y comes out bf16 (what the next Linear takes) and is the reference's fp32 y rounded
    once; dx is fp32, d_delta bf16."""
    x, delta, w, d_res, dy = _add_inputs(shape, torch.float32, torch.bfloat16)
    dy = dy.bfloat16()  # y's gradient arrives in y's dtype
    res, y, dx, d_delta, dw = _run_add(add_rms_norm, x, delta, w, d_res, dy, autocast=True)
    res_ref, y_ref, dx_ref, d_delta_ref, dw_ref = _run_add(add_rms_norm_reference, x, delta, w, d_res, dy)
    assert (res.dtype, y.dtype, dx.dtype, d_delta.dtype, dw.dtype) == \
        (torch.float32, torch.bfloat16, torch.float32, torch.bfloat16, torch.float32)
    assert y_ref.dtype == torch.float32 and d_delta_ref.dtype == torch.bfloat16
    torch.testing.assert_close(res, res_ref, rtol=1e-5, atol=1e-5)
    _assert_one_rounding(y, y_ref, "y")
    torch.testing.assert_close(dx, dx_ref, rtol=1e-5, atol=1e-5)
    _assert_one_rounding(d_delta, dx_ref, "d_delta")  # the residual's fp32 gradient, rounded once
    torch.testing.assert_close(dw, dw_ref, rtol=1e-5, atol=1e-5 * dw_ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_residual_unused(monkeypatch, dtype):
    """The final norm: only y is used, so backward gets no residual gradient (None, not zeros) and the
    kernel skips that read; with the residual used, it folds it in."""
    spy = _Spy(rmsnorm_module._rms_norm_bwd)
    monkeypatch.setattr(rmsnorm_module, "_rms_norm_bwd", spy)
    x, delta, w, d_res, dy = _add_inputs((7, 576), dtype, dtype)
    got = _run_add(add_rms_norm, x, delta, w, None, dy)
    assert [launch["HAS_DRES"] for launch in spy.launches] == [False]
    want = _run_add(add_rms_norm_reference, x.float(), delta.float(), w, None, dy)
    ref16 = _run_add(add_rms_norm_reference, x, delta, w, None, dy)
    for name, g, t, r in zip(("residual", "y", "dx", "d_delta", "dw"), got, want, ref16):
        if dtype == torch.float32:
            atol = 1e-5 * max(1.0, t.abs().max().item())
            torch.testing.assert_close(g, t, rtol=1e-5, atol=atol, msg=_msg(name))
        else:
            assert_bf16_close(g, t, r, name)
    _run_add(add_rms_norm, x, delta, w, d_res, dy)
    assert [launch["HAS_DRES"] for launch in spy.launches] == [False, True]


def test_add_y_unused():
    """Only the residual used: its gradient passes straight to x and delta."""
    x, delta, w, d_res, _ = _add_inputs((3, 100), torch.float32, torch.bfloat16)
    x, delta, w = (t.detach().requires_grad_() for t in (x, delta, w))
    res, _ = add_rms_norm(x, delta, w)
    res.backward(d_res)
    assert torch.equal(x.grad, d_res) and torch.equal(delta.grad, d_res.bfloat16()) and w.grad is None


def test_add_gradients_accumulate():
    """x and delta of one dtype get one gradient tensor from backward: two backward passes into leaf
    tensors must still accumulate each .grad on its own."""
    x, delta, w, d_res, dy = _add_inputs((5, 100), torch.float32, torch.float32)
    x, delta, w = (t.detach().requires_grad_() for t in (x, delta, w))
    for _ in range(2):
        res, y = add_rms_norm(x, delta, w)
        torch.autograd.backward([res, y], [d_res, dy])
    _, _, dx_ref, d_delta_ref, dw_ref = _run_add(add_rms_norm_reference, x, delta, w, d_res, dy)
    torch.testing.assert_close(x.grad, 2 * dx_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(delta.grad, 2 * d_delta_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad, 2 * dw_ref, rtol=1e-5, atol=1e-5 * dw_ref.abs().max().item())


def test_add_non_contiguous_inputs():
    x, delta, w, d_res, dy = _add_inputs((6, 2 * 576), torch.float32, torch.float32)
    x, delta, w, d_res, dy = x[:, ::2], delta.t().contiguous().t()[:, :576], w[:576], d_res[:, :576], dy[:, 1::2]
    assert not x.is_contiguous() and not delta.is_contiguous()
    for got, want in zip(_run_add(add_rms_norm, x, delta, w, d_res, dy),
                         _run_add(add_rms_norm_reference, x, delta, w, d_res, dy)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * max(1.0, want.abs().max().item()))


def test_add_bad_shapes():
    x = torch.randn(2, 576, device=DEVICE)
    with pytest.raises(ValueError, match=r"add_rms_norm: delta has shape \(2, 575\), expected x's \(2, 576\)"):
        add_rms_norm(x, torch.randn(2, 575, device=DEVICE), torch.ones(576, device=DEVICE))
    with pytest.raises(ValueError, match=r"add_rms_norm: weight has shape \(575,\), expected \(576,\)"):
        add_rms_norm(x, torch.randn(2, 576, device=DEVICE), torch.ones(575, device=DEVICE))


def test_rms_norm_writes_autocast_dtype():
    """rms_norm under autocast writes y in the autocast dtype (the next Linear's input), the reference's
    fp32 y rounded once; outside autocast, in promote(x, weight)."""
    x, w, dy = _inputs((7, 576), torch.float32)
    assert rms_norm(x, w).dtype == torch.float32
    assert rms_norm(x, w.bfloat16()).dtype == torch.float32
    assert rms_norm(x.bfloat16(), w.bfloat16()).dtype == torch.bfloat16
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        y = rms_norm(xg, wg)
    y.backward(dy.bfloat16())
    y_ref, dx_ref, dw_ref = _run(rms_norm_reference, x, w, dy.bfloat16().float())
    _assert_one_rounding(y, y_ref, "y")
    assert xg.grad.dtype == wg.grad.dtype == torch.float32
    torch.testing.assert_close(xg.grad, dx_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(wg.grad, dw_ref, rtol=1e-5, atol=1e-5 * dw_ref.abs().max().item())


class _TwoBlocks(torch.nn.Module):
    """rms_norm -> Linear -> add_rms_norm -> Linear -> add_rms_norm (the final norm: residual unused)."""

    def __init__(self, D=64):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.ParameterList([torch.nn.Parameter(1 + 0.1 * torch.randn(D, generator=g)) for _ in range(3)])
        self.lin = torch.nn.Linear(D, D, bias=False)

    def forward(self, x):
        h = rms_norm(x, self.w[0])
        x, h = add_rms_norm(x, self.lin(h), self.w[1])
        _, h = add_rms_norm(x, self.lin(h), self.w[2])
        return h.float().pow(2).mean()


@pytest.mark.parametrize("autocast", [False, True])
def test_compile_fullgraph(autocast):
    """torch.compile(fullgraph=True) traces rms_norm and add_rms_norm (the custom ops' fake kernels, the
    autocast dtype choice, the optional residual gradient) without a graph break, forward and backward."""
    torch.manual_seed(0)
    model = _TwoBlocks().to(DEVICE)
    x = torch.randn(2, 5, 64, device=DEVICE)
    graphs = []

    def backend(gm, example_inputs):  # aot_eager (AOTAutograd, no codegen), keeping dynamo's graph
        graphs.append(gm.code)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    results = []
    torch._dynamo.reset()
    for fn in (model, torch.compile(model, fullgraph=True, backend=backend)):
        model.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=autocast):
            loss = fn(x)
        loss.backward()
        results.append([loss.detach()] + [p.grad for p in model.parameters()])
    assert len(graphs) == 1 and "smollm.add_rms_norm_fwd" in graphs[0] and "smollm.rms_norm_fwd" in graphs[0]
    for (name, _), got, want in zip([("loss", None), *model.named_parameters()], results[1], results[0]):
        # Under autocast the compiled graph sums the Linear's two bf16 weight gradients in another order:
        # bf16 tolerance there (2^-7 of the largest value). The loss and the norms' weights: fp32's.
        tol = 2 ** -7 if autocast and name == "lin.weight" else 1e-5
        atol = tol * max(1.0, want.abs().max().item())
        torch.testing.assert_close(got, want, rtol=tol, atol=atol, msg=_msg(name))
