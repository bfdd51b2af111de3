import json

import pytest
import torch

from smollm.config import get_preset
from smollm.metrics import MetricsLog, flops_per_token, mfu, peak_tflops, read_metrics
from smollm.model import SmolLM


def test_flops_per_token_counts_every_matmul_weight_once():
    cfg = get_preset("tiny")
    model = SmolLM(cfg)
    # Counted another way: the weights of the Linear modules (the tied head once, as lm_head).
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    T = 256
    attn = 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * T
    assert flops_per_token(cfg, T) == 6 * linear + attn
    # At T = 1024 attention adds about a quarter to the 6N of SmolLM2-135M: ~1.02 GFLOP per token.
    assert 7 * 134_515_008 < flops_per_token(get_preset("smollm2-135m"), 1024) < 8 * 134_515_008


@pytest.mark.parametrize("name, peak", [("NVIDIA A10G", 70.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                        ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H200", 989.0),
                                        ("NVIDIA A10", 125.0), ("NVIDIA GeForce GTX 1080", None)])
def test_peak_table(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_tflops(torch.device("cuda", 0)) == peak


def test_no_mfu_on_cpu():
    assert mfu(1e5, get_preset("tiny"), 256, torch.device("cpu")) is None


def test_metrics_log_truncates_after_a_step(tmp_path):
    log = MetricsLog(str(tmp_path), tensorboard=False)
    for s in range(1, 6):
        log.write({"step": s, "tokens": s * 10, "loss": 1.0 / s})
    log.truncate_after(3)
    assert [m["step"] for m in read_metrics(str(tmp_path))] == [1, 2, 3]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["loss"] == pytest.approx(1 / 3)
