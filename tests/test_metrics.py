import json

import pytest
import torch

from smollm.config import get_preset
from smollm.metrics import Eta, MetricsLog, flops_per_token, format_duration, mfu, peak_tflops, read_metrics
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


@pytest.mark.parametrize("seconds, text", [(None, "?"), (0, "0s"), (0.4, "0s"), (59.4, "59s"), (59.6, "1m00s"),
                                           (725, "12m05s"), (3599.4, "59m59s"), (3600, "1h00m"), (3725, "1h02m"),
                                           (50 * 3600 + 3 * 60 + 59, "50h03m"), (-3, "0s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_eta_leaves_out_the_first_step():
    """A run of 10 steps whose first step (compilation, warm-up) takes 100 s and the others 2 s each:
    the time left is 2 s a step, not the mean that the first one inflates."""
    clock = _Clock()
    eta = Eta(10, clock)
    assert eta.seconds_left(0) is None  # nothing run yet
    clock.now = 100.0
    eta.stepped(1)
    assert eta.seconds_left(1) is None  # only the warm-up step: no rate to tell
    for step in range(2, 5):
        clock.now += 2.0
        eta.stepped(step)
    assert eta.seconds_left(4) == pytest.approx(6 * 2.0)
    clock.now += 5.0  # an evaluation: it counts, spread over the steps done (it comes back as the run goes on)
    assert eta.seconds_left(4) == pytest.approx(6 * (3 * 2.0 + 5.0) / 3)
    for step in range(5, 11):
        clock.now += 2.0
        eta.stepped(step)
    assert eta.seconds_left(10) == 0.0


def test_eta_of_a_resumed_run_counts_from_its_own_first_step():
    clock = _Clock()
    eta = Eta(300, clock)
    clock.now = 50.0
    eta.stepped(201)  # the first step after resuming at 200
    clock.now = 59.0
    eta.stepped(210)
    assert eta.seconds_left(210) == pytest.approx(90 * 1.0)
