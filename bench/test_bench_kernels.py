"""pytest-benchmark view of bench/kernels.py: each op, forward+backward, at 4,096 tokens (and
16,384 on a GPU), per implementation. `pytest bench/ --benchmark-only`"""

import pytest
import torch

from bench.kernels import IMPLS, OPS, implementation, make_case, runner
from bench.conftest import DEVICE, synced

TOKENS = [4096] + ([16384] if DEVICE.type == "cuda" else [])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("op", OPS)
def test_kernel_fwd_bwd(benchmark, needs_gpu_for_triton, op, tokens, impl):
    needs_gpu_for_triton(impl)
    fn = implementation(op, impl)
    if isinstance(fn, str):
        pytest.skip(fn)
    case = make_case(op, tokens, torch.bfloat16, DEVICE)
    run = synced(runner(op, impl, fn, case, "fwd+bwd"))
    benchmark.extra_info.update(op=op, tokens=tokens, impl=impl, bytes=case["bytes"]["fwd+bwd"])
    grads = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    assert all(torch.isfinite(g).all() for g in grads)
