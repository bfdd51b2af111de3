"""smollm-triton's kernels: one file per op, each with Triton forward/backward kernels, a
torch.library custom op (with a fake implementation, so torch.compile(fullgraph=True) traces
through it), and a plain-PyTorch reference beside it.

This is the project's own `kernels` package, not Hugging Face's hub `kernels` (same top-level
name on PyPI). transformers' `is_kernels_available()` finds `kernels` installed by the distribution
`smollm-triton` and reads that distribution's version, which is not one it accepts for the hub
package, so it stays False (tests/test_package.py checks it)."""

import os

import torch

# Without a GPU, run the kernels on the CPU through Triton's interpreter (correct, not fast). Must
# be set before the @triton.jit decorators below run.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels import cross_entropy, rmsnorm, rope, swiglu  # noqa: E402

# The ops live in their modules (kernels.rope.rope, kernels.swiglu.swiglu_packed, ...); nothing here
# is rebound, so `kernels.rope` is always the module.
__all__ = ["cross_entropy", "rmsnorm", "rope", "swiglu"]
