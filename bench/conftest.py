"""`pytest bench/ --benchmark-only`: the kernel and train-step benchmarks through pytest-benchmark
(not part of the default test run, whose testpaths is tests/)."""

import pytest
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synced(fn):
    """fn, then wait for the GPU: pytest-benchmark times the host."""
    if DEVICE.type != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out
    return run


@pytest.fixture
def needs_gpu_for_triton():
    def check(impl):
        if DEVICE.type == "cpu" and impl in ("triton", "liger"):
            pytest.skip("CPU: Triton's interpreter checks correctness; its timings mean nothing")
    return check
