"""Our paths through transformers work offline, whatever the installed transformers does with Hugging
Face's hub kernels: the network is cut for each test (a socket that connects anywhere raises), and
transformers' loads go through smollm.weights.transformers_model (use_kernels=False)."""

import os
import socket

import pytest
import torch

from smollm.weights import TRANSFORMERS_LOAD, transformers_model


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails at once, as on a machine with no network; each attempt is recorded."""
    tried = []

    def refuse(self, address, *args, **kwargs):
        tried.append(address)
        raise OSError(f"network access in a test: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # nothing pretends to be offline: only the cut network is
    monkeypatch.delenv("USE_HUB_KERNELS", raising=False)  # transformers' own default
    return tried


def _load_gguf(gguf_path):
    return transformers_model(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path),
                              dtype=torch.float32).eval()


def test_transformers_loads_the_gguf_offline_and_agrees_with_ours(no_network, gguf_path, ours_golden, tokenizer):
    hf = _load_gguf(gguf_path)
    ids = torch.tensor([tokenizer("def f(x):\n    return")["input_ids"]])
    with torch.no_grad():
        want = ours_golden(ids)
        got = hf(ids).logits
    assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()
    assert no_network == []


def test_loads_without_the_hub_kernels_package(no_network, gguf_path, monkeypatch):
    """transformers 5.2x refuses to load ("Kernels are not available") when the hub-kernels package is missing
    and use_kernels is left to its default; ours says use_kernels=False, so it loads."""
    from transformers import modeling_utils
    from transformers.utils import import_utils

    monkeypatch.setattr(import_utils, "is_kernels_available", lambda *a, **k: False)
    monkeypatch.setattr(modeling_utils, "is_kernels_available", lambda *a, **k: False, raising=False)
    assert _load_gguf(gguf_path).config.vocab_size == 49152
    assert no_network == []


def test_every_load_says_no_hub_kernels():
    assert TRANSFORMERS_LOAD == {"use_kernels": False}


def test_export_reloads_through_transformers_offline(no_network, ours_golden, tokenizer, tmp_path):
    """The export's own reload path (a user's `from_pretrained(OUT)`, with transformers' defaults) needs
    no network either, hub-kernels installed or not taken."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from smollm.weights import export_hf

    export_hf(ours_golden, tmp_path / "m", tokenizer=tokenizer)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    ids = torch.tensor([tok("Once upon a time")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, ours_golden(ids), atol=1e-4, rtol=0)
    assert no_network == []
