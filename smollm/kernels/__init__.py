"""smollm-triton's kernels: one file per op, each with Triton forward/backward kernels, a
torch.library custom op (with a fake implementation, so torch.compile(fullgraph=True) traces
through it), and a plain-PyTorch reference beside it.

They live inside `smollm` on purpose: a top-level `kernels` is Hugging Face's hub-kernels package (a
dependency of newer transformers), and no import name of ours may be one another distribution uses
(tests/test_package.py)."""

import os

import torch

# Without a GPU, run the kernels on the CPU through Triton's interpreter (correct, not fast). Must
# be set before the @triton.jit decorators below run.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from smollm.kernels import cross_entropy, rmsnorm, rope, swiglu  # noqa: E402

# The ops live in their modules (smollm.kernels.rope.rope, smollm.kernels.swiglu.swiglu_packed, ...); nothing here
# is rebound, so `smollm.kernels.rope` is always the module.
__all__ = ["cross_entropy", "rmsnorm", "rope", "swiglu"]
