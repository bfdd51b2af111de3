"""pytest-benchmark view of bench/train_step.py: one training step per row (a small preset on a
CPU, SmolLM2-135M at 16 x 1024 on a GPU). `pytest bench/ --benchmark-only`"""

import pytest
import torch

from bench.train_step import ROWS, batch, build, step_fn
from bench.conftest import DEVICE, synced
from smollm.config import get_preset

GPU = DEVICE.type == "cuda"


@pytest.mark.parametrize("name,builder,kernels,compiled", ROWS, ids=[r[0] for r in ROWS])
def test_train_step(benchmark, needs_gpu_for_triton, name, builder, kernels, compiled):
    needs_gpu_for_triton("triton" if kernels == "triton" or builder == "hf-liger" else "torch")
    cfg = get_preset("smollm2-135m" if GPU else "tiny")
    built = build(builder, kernels, cfg, DEVICE)
    if isinstance(built, str):
        pytest.skip(built)
    model, loss_fn = built
    step = step_fn(model, loss_fn, compiled, DEVICE)
    x, y = batch(cfg, 16 if GPU else 4, 1024 if GPU else 128, DEVICE)
    run = synced(lambda: step(x, y))
    loss = benchmark.pedantic(run, rounds=5, warmup_rounds=2)
    assert torch.isfinite(loss)
