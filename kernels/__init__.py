"""smollm-triton's kernels: one file per op, each with Triton forward/backward kernels, a
torch.library custom op (with a fake implementation, so torch.compile(fullgraph=True) traces
through it), and a plain-PyTorch reference beside it.

This is the project's own `kernels` package, not Hugging Face's hub `kernels` (same top-level
name on PyPI). It has no `__version__` and its distribution is `smollm-triton`, so transformers'
`is_kernels_available()` stays False (tests/test_package.py checks it)."""

import os

import torch

# Without a GPU, run the kernels on the CPU through Triton's interpreter (correct, not fast). Must
# be set before the @triton.jit decorators below run.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels.cross_entropy import linear_cross_entropy, linear_cross_entropy_reference  # noqa: E402
from kernels.rmsnorm import add_rms_norm, add_rms_norm_reference, rms_norm, rms_norm_reference  # noqa: E402
from kernels.rope import rope, rope_reference, rope_tables, rotate_half  # noqa: E402
from kernels.swiglu import swiglu, swiglu_packed, swiglu_packed_reference, swiglu_reference  # noqa: E402

__all__ = [
    "linear_cross_entropy", "linear_cross_entropy_reference",
    "add_rms_norm", "add_rms_norm_reference", "rms_norm", "rms_norm_reference",
    "rope", "rope_reference", "rope_tables", "rotate_half",
    "swiglu", "swiglu_packed", "swiglu_packed_reference", "swiglu_reference",
]
