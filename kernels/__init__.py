"""smollm-triton's kernels: one file per op, each with a plain-PyTorch reference beside it.

This is the project's own `kernels` package, not Hugging Face's hub `kernels` (same top-level
name on PyPI). It has no `__version__` and its distribution is `smollm-triton`, so transformers'
`is_kernels_available()` stays False (tests/test_package.py checks it)."""

from kernels.cross_entropy import linear_cross_entropy_reference
from kernels.rmsnorm import rms_norm_reference
from kernels.rope import rope_reference, rope_tables, rotate_half
from kernels.swiglu import swiglu_reference

__all__ = [
    "linear_cross_entropy_reference",
    "rms_norm_reference",
    "rope_reference",
    "rope_tables",
    "rotate_half",
    "swiglu_reference",
]
