"""smollm/training/device.py: the memory estimate against measured CPU peaks (the FSDP runs: test_parallel.py)."""

import pytest
import torch

from conftest import peak_extra_bytes
from smollm.model import SmolLM
from smollm.train_config import RunConfig, apply_overrides
from smollm.training.device import autocast, memory_estimate
from smollm.training.optimizer import make_optimizer
from smollm.training.parallel import Dist, parallelize
from smollm.training.step import NonFiniteGuard, optimizer_step

CPU = torch.device("cpu")


def measured_peak(cfg: RunConfig, world: int = 1, rank: int = 0) -> tuple[int, float, int]:
    """(bytes, loss, this process's parameters): the peak tensor memory of a training step (the second: the first made the optimizer's
    state), counting what is held between steps (weights, optimizer state) and what the step allocates."""
    torch.manual_seed(0)
    model = SmolLM(cfg.model_config(), kernels=cfg.model.kernels)
    fwd, ddp = parallelize(model, cfg, Dist(rank, world, 0), CPU)
    opt = make_optimizer(model, cfg, CPU)
    guard = NonFiniteGuard(CPU, "unused")
    B, T, A, V = cfg.train.micro_batch, cfg.data.seq_len, cfg.train.grad_accum, cfg.model_config().vocab_size
    x = torch.randint(0, V, (A, B, T), generator=torch.Generator().manual_seed(1))
    micro = [(x[i, :, :-1], x[i, :, 1:], None) for i in range(A)]
    # seq_len + 1 tokens a row, as the loader's windows: seq_len inputs, their next tokens as targets
    out = {}

    def step(s):
        out["loss"], _ = optimizer_step(fwd, model, opt, micro, guard, s, 1.0, ddp, world, amp=lambda: autocast(CPU, cfg))

    step(1)
    local = lambda t: t.to_local() if hasattr(t, "to_local") else t  # noqa: E731
    held = [local(p) for p in model.parameters()] + [local(t) for s in opt.state.values() for t in s.values()]
    peak = sum(t.numel() * t.element_size() for t in held) + peak_extra_bytes(lambda: step(2))
    return peak, float(out["loss"]), sum(local(p).numel() for p in model.parameters())


def micro_config(*extra: str) -> RunConfig:
    return apply_overrides(RunConfig(), ["model.compile=false", "optim.kind=adamw", "train.grad_accum=1",
                                         *extra]).validate()


@pytest.mark.parametrize("extra", [
    ["model.preset=tiny", "model.kernels=torch", "train.micro_batch=4", "data.seq_len=257"],  # the logits dominate
    ["model.preset=tiny", "model.kernels=torch", "train.micro_batch=4", "data.seq_len=257", "train.cpu_autocast=true"],
    ["model.preset=tiny", "model.kernels=triton", "train.micro_batch=1", "data.seq_len=129"],  # one chunk of them
    ["model.preset=smollm2-135m", "model.kernels=torch", "train.micro_batch=2", "data.seq_len=129",
     "parallel.checkpoint_activations=true"],
], ids=["tiny-torch", "tiny-torch-bf16", "tiny-triton", "135m-torch-checkpointed"])
def test_estimate_within_15_percent_of_the_measured_peak(extra):
    cfg = micro_config(*extra)
    cfg.data.seq_len -= 1  # the windows' length; the measured batch has one token more per row
    peak, loss, _ = measured_peak(cfg)
    est = memory_estimate(cfg, CPU)
    assert abs(est.total - peak) <= 0.15 * peak, (est.describe(), peak / 2 ** 30)
    assert torch.isfinite(torch.tensor(loss))
    if cfg.model.kernels == "torch" and cfg.model.preset == "tiny":  # the test can fail: the logits count
        assert abs(est.total - est.loss - peak) > 0.15 * peak


def test_each_part_moves_the_estimate():
    """Activation checkpointing keeps a block's inputs only; the Triton path holds one chunk of logits;
    FSDP divides the weights, gradients and optimizer state by the processes and adds its buffers."""
    base = micro_config("model.preset=smollm2-135m", "model.kernels=torch", "train.micro_batch=8", "data.seq_len=1024")
    plain = memory_estimate(base, CPU)
    checkpointed = memory_estimate(apply_overrides(base, ["parallel.checkpoint_activations=true"]), CPU)
    assert checkpointed.activations < plain.activations / 5
    assert memory_estimate(apply_overrides(base, ["model.kernels=triton"]), CPU).loss < plain.loss / 10
    fsdp = memory_estimate(apply_overrides(base, ["parallel.strategy=fsdp"]), CPU, world=4)
    assert fsdp.weights == -(-plain.weights // 16) * 4 and fsdp.optimizer == -(-plain.weights // 16) * 8
    assert fsdp.gathered > 0 == plain.gathered
    assert memory_estimate(apply_overrides(base, ["parallel.strategy=fsdp"]), CPU, world=1) == plain  # one process
