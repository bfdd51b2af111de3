"""smollm-triton's kernels: one file per op, each with Triton forward/backward kernels, a
torch.library custom op (with a fake implementation, so torch.compile(fullgraph=True) traces
through it), and a plain-PyTorch reference beside it.

They live inside `smollm` on purpose: a top-level `kernels` is Hugging Face's hub-kernels package (a
dependency of newer transformers), and no import name of ours may be one another distribution uses
(tests/test_package.py)."""

from __future__ import annotations

import os
import re

import torch

from smollm.errors import error_line

# Without a GPU, run the kernels on the CPU through Triton's interpreter (correct, not fast). Must
# be set before the @triton.jit decorators below run.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Triton's interpreter up to 3.6 turns a scalar into an index with int() of its 1-element numpy array
# (runtime/interpreter.py: tensor.__index__ = int(self.handle.data)); numpy 2.4 made that a TypeError (an
# expired deprecation: only 0-d arrays convert), and Triton 3.7 calls .squeeze() first. On such a pair
# every kernel that loops over a runtime size fails, each with a long InterpreterError.
TRITON_FIXED = (3, 7)  # the first Triton whose interpreter works with numpy >= 2.4
NUMPY_BREAKS = (2, 4)  # the first numpy that refuses int() of a 1-element 1-d array
# What Triton itself reads as true in TRITON_INTERPRET (its C++ getenv_bool; checked on 3.6).
_TRUE = {"1", "true", "on", "yes", "y"}
# The distributions that install the `triton` module: PyPI's, and PyTorch's own builds of it.
_TRITON_DISTRIBUTIONS = ("triton", "pytorch-triton", "pytorch-triton-rocm", "pytorch-triton-xpu")


def _release(version: str | None) -> tuple[int, ...] | None:
    """(major, minor) of a version string ("3.6.0", "2.4.0rc1", "3.6.0+git9844da9"); None if unreadable."""
    m = re.match(r"\s*(\d+)\.(\d+)", version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def interpreter_problem(triton_version: str | None, numpy_version: str | None) -> str | None:
    """Why Triton `triton_version`'s interpreter cannot run with numpy `numpy_version`, in one line, or
    None when the pair works (or a version is unknown: nothing is refused on a guess)."""
    t, n = _release(triton_version), _release(numpy_version)
    if t is None or n is None or t >= TRITON_FIXED or n < NUMPY_BREAKS:
        return None
    return (f"Triton {triton_version}'s interpreter cannot run with numpy {numpy_version} (it calls int() on an "
            f"array, which numpy >= {'.'.join(map(str, NUMPY_BREAKS))} refuses); install "
            f"numpy<{'.'.join(map(str, NUMPY_BREAKS))} or triton>={'.'.join(map(str, TRITON_FIXED))} for CPU runs")


def interpreting() -> bool:
    """Whether Triton will run its kernels in the interpreter (TRITON_INTERPRET, as Triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE


def _installed_version(*distributions: str) -> str | None:
    import importlib.metadata

    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def check_interpreter() -> None:
    """Stop, with one line, an interpreter run on a Triton/numpy pair that cannot work (before the first
    kernel fails with a traceback). Reads installed versions' metadata only, and only when interpreting."""
    if not interpreting():
        return
    problem = interpreter_problem(_installed_version(*_TRITON_DISTRIBUTIONS), _installed_version("numpy"))
    if problem:
        raise SystemExit(f"error: {error_line(RuntimeError(problem))}")


check_interpreter()

from smollm.kernels import cross_entropy, rmsnorm, rope, swiglu  # noqa: E402

# The ops live in their modules (smollm.kernels.rope.rope, smollm.kernels.swiglu.swiglu_packed, ...); nothing here
# is rebound, so `smollm.kernels.rope` is always the module.
__all__ = ["cross_entropy", "rmsnorm", "rope", "swiglu"]
