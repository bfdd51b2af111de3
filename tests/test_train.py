import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import smollm.cli.train as CT
import smollm.training.loop as L
import smollm.training.optimizer as O
import smollm.training.step as S
import smollm.training.trainer as TR
from smollm.checkpoint import TRAINER_STATE, latest_checkpoint, list_checkpoints
from smollm.config import get_preset
from smollm.metrics import read_metrics
from smollm.model import SmolLM
from smollm.train_config import RunConfig, apply_overrides
from conftest import micro_run_overrides as _overrides
from conftest import file_tree, sigterm_during_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
def _cfg(run_dir, dataset, gguf_path, *extra) -> RunConfig:
    return apply_overrides(RunConfig(), _overrides(run_dir, dataset, gguf_path, *extra)).validate()


def _losses(run_dir):
    return {m["step"]: m["loss"] for m in read_metrics(str(run_dir)) if "loss" in m}


# ------------------------------------------------------------------------- accumulation --

def test_accumulation_equals_one_big_batch():
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    x = torch.randint(0, cfg.vocab_size, (8, 16))
    y = torch.randint(0, cfg.vocab_size, (8, 16))
    y[0, :13] = -100  # micro-batches with different numbers of valid targets
    y[5, 2:] = -100

    def grads(split):
        torch.manual_seed(1)
        model = SmolLM(cfg)
        b = 8 // split
        loss = S.forward_backward(model, [(x[i * b:(i + 1) * b], y[i * b:(i + 1) * b]) for i in range(split)])
        return loss, {n: p.grad.clone() for n, p in model.named_parameters()}

    loss1, g1 = grads(1)
    for split in (2, 4, 8):
        loss, g = grads(split)
        assert abs(loss.item() - loss1.item()) < 1e-5, split
        for n in g1:
            assert (g[n] - g1[n]).abs().max() <= 1e-5 * g1[n].abs().max() + 1e-9, (split, n)

    # The test can fail: the plain mean of the micro-batch means weighs a target of a micro-batch
    # with few valid targets more, and its gradient is far outside the tolerance above.
    torch.manual_seed(1)
    model = SmolLM(cfg)
    (sum(model(x[i * 2:(i + 1) * 2], y[i * 2:(i + 1) * 2]) for i in range(4)) / 4).backward()
    w = "model.embed_tokens.weight"
    assert (model.get_parameter(w).grad - g1[w]).abs().max() > 0.1 * g1[w].abs().max()


# ------------------------------------------------------------------------- exact resume --

def test_resume_is_exact(tmp_path, dataset, gguf_path, monkeypatch, capsys):
    whole = L.train(_cfg(tmp_path / "whole", dataset, gguf_path))
    assert whole["step"] == 6 and whole["stopped"] is None
    # The config records what ran: fp32 on a CPU (train.dtype's default, bf16, is a GPU's autocast).
    assert _cfg(tmp_path, dataset, gguf_path).train.dtype == "bf16"
    whole_dir = tmp_path / "whole"
    for saved in (whole_dir / "config.yaml", whole_dir / "checkpoints" / "step_000006" / "run_config.yaml"):
        assert "\n  dtype: fp32\n" in saved.read_text()
    handler = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as m:
        sigterm_during_step(m, 4)
        first = L.train(_cfg(tmp_path / "resumed", dataset, gguf_path))
    assert first["step"] == 4 and first["stopped"] == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == handler  # the run put the handler it found back
    assert latest_checkpoint(str(tmp_path / "resumed")).endswith("step_000004")
    assert CT.main(["--resume", str(tmp_path / "resumed")]) == 0  # the checkpoint's own config

    a, b = _losses(tmp_path / "whole"), _losses(tmp_path / "resumed")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    assert a == b  # to the bit: CPU, fp32
    va = [m["val_loss"] for m in read_metrics(str(tmp_path / "whole")) if "val_loss" in m]
    vb = [m["val_loss"] for m in read_metrics(str(tmp_path / "resumed")) if "val_loss" in m]
    assert va == vb and len(va) == 3  # steps 0, 3, 6
    from smollm.weights import read_safetensors

    wa = read_safetensors(latest_checkpoint(str(tmp_path / "whole")))
    wb = read_safetensors(latest_checkpoint(str(tmp_path / "resumed")))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # The record of the run: samples at every checkpoint, a loss curve, transformers-loadable weights.
    samples = [json.loads(line) for line in open(tmp_path / "whole" / "samples.jsonl")]
    assert [s["step"] for s in samples] == [3, 6]
    md = (tmp_path / "whole" / "samples.md").read_text()
    assert "## Step 3" in md and "## Step 6" in md and "def fibonacci(n):" in md
    assert (tmp_path / "whole" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    os.unlink(tmp_path / "whole" / "loss.png")
    assert CT.main(["plot", str(tmp_path / "whole")]) == 0
    assert (tmp_path / "whole" / "loss.png").stat().st_size > 10_000

    # Resuming the finished run as it is trains nothing, says so, and rewrites none of its record.
    before = {k: v for k, v in file_tree(whole_dir).items() if k != "train.log"}
    assert CT.main(["--resume", str(whole_dir)]) == 0
    assert "nothing to train: the run is at step 6 of train.max_steps=6" in capsys.readouterr().out
    assert {k: v for k, v in file_tree(whole_dir).items() if k != "train.log"} == before


@pytest.mark.parametrize("recipe", [["optim.kind=muon"], ["data.windows=aligned"],
                                    ["optim.kind=muon", "data.windows=aligned", "train.grad_accum=1"]])
def test_resume_is_exact_with_muon_and_aligned_windows(tmp_path, dataset, gguf_path, monkeypatch, recipe):
    """Killed at step 4 and resumed: the losses, validation losses and weights of an uninterrupted run,
    to the bit (CPU, fp32), with Muon's momentum and the aligned windows' packing restored."""
    whole = L.train(_cfg(tmp_path / "whole", dataset, gguf_path, *recipe))
    with monkeypatch.context() as m:
        sigterm_during_step(m, 4)
        L.train(_cfg(tmp_path / "resumed", dataset, gguf_path, *recipe))
    assert CT.main(["--resume", str(tmp_path / "resumed")]) == 0
    a, b = _losses(tmp_path / "whole"), _losses(tmp_path / "resumed")
    assert sorted(a) == [1, 2, 3, 4, 5, 6] and a == b and whole["step"] == 6
    val = [[m["val_loss"] for m in read_metrics(str(tmp_path / r)) if "val_loss" in m] for r in ("whole", "resumed")]
    assert val[0] == val[1]
    from smollm.weights import read_safetensors

    wa = read_safetensors(latest_checkpoint(str(tmp_path / "whole")))
    wb = read_safetensors(latest_checkpoint(str(tmp_path / "resumed")))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    state = torch.load(os.path.join(latest_checkpoint(str(tmp_path / "whole")), TRAINER_STATE), weights_only=True)
    kinds = [g.get("muon", False) for g in state["optimizer"]["param_groups"]]
    assert kinds == ([True, False, False] if "optim.kind=muon" in recipe else [False, False])
    # The test can fail: the recipe changed the run (another optimizer or other windows, other losses).
    plain = L.train(_cfg(tmp_path / "plain", dataset, gguf_path, *[r for r in recipe if "grad_accum" in r]))
    assert plain["step"] == 6 and _losses(tmp_path / "plain") != a


def test_run_directory_with_checkpoints_needs_resume(tmp_path, dataset, gguf_path, capsys):
    L.train(_cfg(tmp_path / "run", dataset, gguf_path, "train.max_steps=2", "log.ckpt_every=2"))
    with pytest.raises(FileExistsError, match="--resume"):
        L.train(_cfg(tmp_path / "run", dataset, gguf_path, "train.max_steps=2"))


def _poison_step(monkeypatch, bad_call: int):
    """The bad_call-th call of forward_backward returns a NaN loss."""
    real = S.forward_backward
    calls = {"n": 0}

    def poisoned(*args, **kw):
        calls["n"] += 1
        loss = real(*args, **kw)
        return loss * float("nan") if calls["n"] == bad_call else loss

    monkeypatch.setattr(S, "forward_backward", poisoned)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, dataset, gguf_path, monkeypatch,
                                                                   capsys):
    _poison_step(monkeypatch, 5)
    rc = CT.main(["--config", os.path.join(ROOT, "configs", "tiny.yaml"),
                 *_overrides(tmp_path / "run", dataset, gguf_path, "log.ckpt_every=2", "train.max_steps=9")])
    err = capsys.readouterr().err
    assert rc == 1 and "non-finite loss (nan)" in err and "at step 5" in err and "step_000004" in err
    assert [s for s, _ in list_checkpoints(str(tmp_path / "run"))] == [2, 4]


def test_non_finite_between_log_steps_is_caught_at_the_next_sync(tmp_path, dataset, gguf_path, monkeypatch, capsys):
    """Step 5 goes bad between log steps (every 4): the run stops at step 6 (a checkpoint step, where
    the host reads the flag) naming step 5, and writes no checkpoint after it."""
    _poison_step(monkeypatch, 5)
    rc = CT.main(_overrides(tmp_path / "run", dataset, gguf_path, "log.ckpt_every=2", "log.log_every=4",
                           "log.eval_every=100", "train.max_steps=9"))
    err = capsys.readouterr().err
    assert rc == 1 and "at step 5" in err and "step_000004" in err, err
    assert [s for s, _ in list_checkpoints(str(tmp_path / "run"))] == [2, 4]


def _micro_step_setup(kernels="torch", compiled=False, fused="true"):
    cfg = apply_overrides(RunConfig(), ["model.preset=tiny", "data.seq_len=16", f"model.kernels={kernels}", f"optim.fused={fused}",
                                        "model.overrides={hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 2, "
                                        "num_key_value_heads: 1, head_dim: 32, intermediate_size: 128}"]).validate()
    torch.manual_seed(0)
    model = SmolLM(cfg.model_config(), kernels=kernels)
    opt = O.make_optimizer(model, cfg, torch.device("cpu"))
    x = torch.randint(0, 49152, (2, 2, 16))
    micro = [(x[i], x[i].roll(-1, 1)) for i in range(2)]
    fwd = torch.compile(model) if compiled else model
    return model, opt, micro, fwd


def test_a_non_finite_step_never_updates_the_weights(monkeypatch):
    model, opt, micro, fwd = _micro_step_setup()
    guard = S.NonFiniteGuard(torch.device("cpu"), "runs/none")
    S.optimizer_step(fwd, model, opt, micro, guard, 1, 1.0)
    after_good = {n: p.detach().clone() for n, p in model.named_parameters()}
    real = S.forward_backward
    monkeypatch.setattr(S, "forward_backward", lambda *a, **k: real(*a, **k) * float("inf"))
    S.optimizer_step(fwd, model, opt, micro, guard, 2, 1.0)
    monkeypatch.setattr(S, "forward_backward", real)
    S.optimizer_step(fwd, model, opt, micro, guard, 3, 1.0)  # finite again, but the run is stopping: no update
    assert all(torch.equal(p, after_good[n]) for n, p in model.named_parameters())
    with pytest.raises(S.NonFiniteLoss, match=r"non-finite loss \(inf\) .* at step 2"):
        guard.check()
    # The test can fail: without the guard's flag the same steps do change the weights.
    guard = S.NonFiniteGuard(torch.device("cpu"), "runs/none")
    S.optimizer_step(fwd, model, opt, micro, guard, 4, 1.0)
    assert not all(torch.equal(p, after_good[n]) for n, p in model.named_parameters())
    guard.check()


class _SyncCounter:
    """Counts the calls that make the host wait for the device: .item(), bool(t), .tolist(), .cpu()
    (and float(t) / int(t)), except those Triton's CPU interpreter makes to run a kernel on the host."""

    NAMES = ("item", "__bool__", "tolist", "cpu", "__float__", "__int__")

    def __init__(self, monkeypatch):
        self.calls = []
        for name in self.NAMES:
            real = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, real))

    def _wrap(self, name, real):
        def counted(t, *args, **kw):
            caller = sys._getframe(1).f_code.co_filename
            if os.sep + "triton" + os.sep not in caller:
                self.calls.append(f"{name} from {caller}:{sys._getframe(1).f_lineno}")
            return real(t, *args, **kw)
        return counted


@pytest.mark.parametrize("kernels,compiled", [("torch", False), ("triton", False), ("torch", True)])
def test_no_host_sync_in_a_non_log_step(monkeypatch, kernels, compiled):
    model, opt, micro, fwd = _micro_step_setup(kernels, compiled)
    guard = S.NonFiniteGuard(torch.device("cpu"), "runs/none")
    S.optimizer_step(fwd, model, opt, micro, guard, 1, 1.0)  # warm-up: compile, optimizer state
    counter = _SyncCounter(monkeypatch)
    loss, gnorm = S.optimizer_step(fwd, model, opt, micro, guard, 2, 1.0)
    assert counter.calls == []
    loss.item()  # the test can fail: a sync is counted
    assert len(counter.calls) == 1 and counter.calls[0].startswith("item from")
    monkeypatch.undo()
    assert torch.isfinite(loss) and torch.isfinite(gnorm)


def test_the_loop_reads_the_device_only_at_log_and_checkpoint_steps(tmp_path, dataset, gguf_path, monkeypatch):
    """The whole loop, not only optimizer_step: a step that neither logs, evaluates nor checkpoints
    makes no host sync (syncs are counted per step, from the start of one optimizer step to the next)."""
    counter = _SyncCounter(monkeypatch)
    starts = []  # (step, syncs counted before it began)
    real = S.optimizer_step

    def marked(*args, **kw):
        starts.append((inspect.signature(real).bind(*args, **kw).arguments["step"], len(counter.calls)))
        return real(*args, **kw)

    monkeypatch.setattr(TR, "optimizer_step", marked)
    L.train(_cfg(tmp_path / "run", dataset, gguf_path, "log.log_every=3", "log.eval_every=100",
                 "log.ckpt_every=100"))
    ends = [n for _, n in starts[1:]] + [len(counter.calls)]
    syncs = {step: end - begin for (step, begin), end in zip(starts, ends)}
    assert list(syncs) == [1, 2, 3, 4, 5, 6]
    assert [s for s, n in syncs.items() if n] == [3, 6], counter.calls  # the test can fail: 3 and 6 do sync


def test_unfused_adamw_checks_every_step(monkeypatch):
    """Without fused AdamW the optimizer cannot skip on the device: the guard reads its flag before
    every update instead (a sync per step, stated in optim.fused's docs)."""
    model, opt, micro, fwd = _micro_step_setup(fused="false")
    guard = S.NonFiniteGuard(torch.device("cpu"), "runs/none")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    real = S.forward_backward
    monkeypatch.setattr(S, "forward_backward", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(S.NonFiniteLoss, match="at step 1"):
        S.optimizer_step(fwd, model, opt, micro, guard, 1, 1.0)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_config_errors_from_the_command_line(capsys):
    assert CT.main(["--config", os.path.join(ROOT, "configs", "tiny.yaml"), "optim.lerning_rate=1"]) == 2
    assert "optim.lerning_rate: unknown key" in capsys.readouterr().err
    assert CT.main(["train.max_steps=ten"]) == 2
    assert "train.max_steps: expected an integer, got 'ten'" in capsys.readouterr().err


# ------------------------------------------------------------------------- processes --

def _env():
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("WORLD_SIZE", None)
    return env


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_the_step_checkpoints_and_exits_0(tmp_path, dataset, gguf_path, sig):
    run = tmp_path / "run"
    cmd = [sys.executable, os.path.join(ROOT, "train.py"),
           *_overrides(run, dataset, gguf_path, "train.max_steps=100000", "log.ckpt_every=100000",
                       "log.eval_every=100000")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(_losses(run)) < 3 and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert f"({signal.Signals(sig).name})" in out
    steps = list_checkpoints(str(run))
    assert len(steps) == 1 and os.path.exists(os.path.join(steps[0][1], TRAINER_STATE))
    assert steps[0][0] == max(_losses(run)) >= 3  # the checkpoint is of the last finished step


# AdamW named: train.py's default config (configs/tiny.yaml) trains with Muon.
@pytest.mark.parametrize("recipe", [["optim.kind=adamw"], ["optim.kind=muon", "data.windows=aligned"]])
def test_ddp_on_gloo_matches_one_process(tmp_path, dataset, gguf_path, recipe):
    """2 processes x 2 sequences = 1 process x 4 sequences: the same windows, the same losses (also
    with Muon, whose update of the averaged gradient is the same on every rank, and aligned windows)."""
    common = ["train.grad_accum=2", "train.max_steps=4", "log.ckpt_every=4", "log.eval_every=4", *recipe]
    one = [sys.executable, os.path.join(ROOT, "train.py"),
           *_overrides(tmp_path / "one", dataset, gguf_path, *common, "train.micro_batch=4")]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train.py"),
           *_overrides(tmp_path / "two", dataset, gguf_path, *common, "train.micro_batch=2")]
    for cmd in (one, two):
        r = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    # fp32, but Muon orthogonalizes in bf16: the sum of two ranks' gradients rounds a little differently
    # from one process's, and now and then that flips a bf16 rounding of the update.
    tol = 1e-4 if "optim.kind=muon" in recipe else 1e-5
    for s in a:
        assert abs(a[s] - b[s]) <= tol * abs(a[s]), (s, a[s], b[s])
    assert [s for s, _ in list_checkpoints(str(tmp_path / "two"))] == [4]  # rank 0 alone wrote it


@pytest.mark.parametrize("terminal", [False, True])
def test_log_lines_say_step_of_total_throughput_and_time_left(tmp_path, dataset, gguf_path, capsys, monkeypatch,
                                                              terminal):
    """Each step's console line, in train.log too, says where the run is of how many steps, its
    tokens/s and the time left: in a log file or a pipe (no progress bar) as on a terminal (with it)."""
    if terminal:
        monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert sys.stderr.isatty() is terminal
    run = tmp_path / "run"
    L.train(_cfg(run, dataset, gguf_path))  # 6 steps, a line every step, evaluations at 0, 3 and 6
    out = capsys.readouterr().out
    eta = r"eta (\?|\d+s|\d+m\d\ds|\d+h\d\dm)"
    steps = [line for line in out.splitlines() if re.match(r"step +\d+/6 \| loss ", line)]
    assert [int(re.match(r"step +(\d+)/6 ", line).group(1)) for line in steps] == [1, 2, 3, 4, 5, 6], out
    for line in steps:
        assert re.search(rf"\| [\d,]+ tok/s \| {eta} \|", line), line
    # The first step (warm-up) alone gives no rate; from the second on, a time; none left at the end.
    assert "| eta ? |" in steps[0] and all("eta ?" not in line for line in steps[1:]) and "| eta 0s |" in steps[-1]
    assert [line for line in out.splitlines() if "val loss" in line] == [
        f"step {m['step']}/6 | val loss {m['val_loss']:.4f} | {m['val_bpb']:.4f} bits/byte"
        for m in read_metrics(str(run)) if "val_loss" in m]
    log = (run / "train.log").read_text().splitlines()
    assert all(line in log for line in steps)
    etas = {m["step"]: m["eta_s"] for m in read_metrics(str(run)) if "loss" in m}
    assert etas[1] is None and all(etas[s] > 0 for s in (2, 3, 4, 5)) and etas[6] == 0


def test_one_training_loss_everywhere(tmp_path, dataset, gguf_path):
    """metrics.jsonl, checkpoint.json and samples report one training loss: the mean over the steps
    since the previous log line (here 3 steps), not the last step's alone."""
    L.train(_cfg(tmp_path / "each", dataset, gguf_path))  # log_every 1: every step's own loss
    L.train(_cfg(tmp_path / "every3", dataset, gguf_path, "log.log_every=3"))
    each, every3 = _losses(tmp_path / "each"), _losses(tmp_path / "every3")
    assert sorted(every3) == [3, 6]
    for step in (3, 6):
        assert every3[step] == pytest.approx(sum(each[s] for s in range(step - 2, step + 1)) / 3, rel=1e-6)
        assert abs(every3[step] - each[step]) > 1e-4  # the test can fail: the mean is not the last step's
        info = json.loads((tmp_path / "every3" / "checkpoints" / f"step_00000{step}" / "checkpoint.json").read_text())
        assert info["loss"] == every3[step]
    samples = [json.loads(line) for line in (tmp_path / "every3" / "samples.jsonl").read_text().splitlines()]
    assert {s["step"]: s["loss"] for s in samples} == every3
