"""smollm/training/parallel.py: FSDP2 on two CPU processes (gloo) trains as one process does."""

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One script, two ways: WORLD_SIZE=1 trains the whole batch of 4; under torchrun each of 2 ranks takes
# 2 rows of the same batch, the model sharded by parallel.shard. Losses: the mean over all 4 rows.
SCRIPT = r"""
import json, sys
import torch, torch.distributed as dist
from smollm.config import get_preset
from smollm.model import SmolLM
from smollm.training.parallel import env_int, shard

world = env_int("WORLD_SIZE", 1)
if world > 1:
    dist.init_process_group("gloo")
rank = dist.get_rank() if world > 1 else 0
torch.manual_seed(0)
cfg = get_preset("tiny")
cfg.vocab_size, cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size = 512, 2, 64, 128
model = SmolLM(cfg, kernels=sys.argv[2])
unsharded = sum(p.numel() for p in model.parameters())
names = list(model.state_dict())
if world > 1:
    shard(model, checkpoint_activations=sys.argv[1] == "1")
assert list(model.state_dict()) == names, "shard renamed parameters"
local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())
opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
# 16 positions: enough for RoPE and attention to matter, few enough for the interpreted Triton kernels
tokens = torch.randint(0, cfg.vocab_size, (4, 17), generator=torch.Generator().manual_seed(1))  # learned by heart
losses = []
for step in range(4):
    rows = tokens[rank * 4 // world:(rank + 1) * 4 // world]
    loss = model(rows[:, :-1], rows[:, 1:])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    opt.step()
    opt.zero_grad()
    loss = loss.detach()
    if world > 1:
        dist.all_reduce(loss)
        loss /= world
    losses.append(loss.item())
if rank == 0:
    print(json.dumps({"losses": losses, "local_params": local, "params": unsharded}))
"""


def _run(tmp_path, world: int, checkpointing: bool, kernels: str = "torch") -> dict:
    script = tmp_path / "fsdp_check.py"
    script.write_text(SCRIPT)
    launch = [sys.executable] if world == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  f"--nproc_per_node={world}"]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([*launch, str(script), "1" if checkpointing else "0", kernels], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("checkpointing,kernels", [(False, "torch"), (True, "torch"), (False, "triton")])
def test_fsdp_on_gloo_matches_one_process(tmp_path, checkpointing, kernels):
    """fp32: the same losses within 1e-5 (with activation checkpointing too, and with our Triton ops and
    the fused cross-entropy), each rank holding half of the parameters."""
    one, two = _run(tmp_path, 1, False, kernels), _run(tmp_path, 2, checkpointing, kernels)
    for a, b in zip(one["losses"], two["losses"], strict=True):
        assert abs(a - b) <= 1e-5 * abs(a), (one["losses"], two["losses"])
    assert one["losses"][-1] < one["losses"][0]  # it trains
    assert two["local_params"] <= one["params"] // 2 + 1024  # dim-0 shards: half, up to padding


# ---- parallel.strategy=fsdp in train.py: sharded checkpoints, resumed on other numbers of processes ----

def _torchrun(n: int, tmp_path, args: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           os.path.join(ROOT, "train.py"), *args]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_fsdp_checkpoint_resumes_on_one_and_four_processes(tmp_path, dataset, gguf_path):
    """Save on 2 processes (sharded: each writes its part), mirrored to a store; resume on 1 (from the
    checkpoint) and on 4 (from the store): the losses go on as an uninterrupted run's (fp32, within 1e-5),
    and a one-process checkpoint resumes sharded on 2 likewise. The export of the sharded checkpoint loads
    in transformers with the sharded weights."""
    import smollm.training.loop as L
    from smollm.checkpoint import is_sharded_checkpoint, list_checkpoints, verify_checkpoint
    from smollm.export import export_run
    from smollm.metrics import read_metrics
    from smollm.train_config import load_config
    from smollm.weights import read_safetensors, transformers_model
    from conftest import micro_run_overrides

    def args(out, batch, *extra):  # the tiny preset; a global batch of 4 sequences, however many processes share it
        return micro_run_overrides(out, dataset, gguf_path, "model.overrides={}", "parallel.strategy=fsdp",
                                   "optim.kind=adamw", "train.grad_accum=1", f"train.micro_batch={batch}", "train.max_steps=4",
                                   "log.ckpt_every=2", "log.eval_every=2", *extra)

    def config(*a):  # train.py's default config, as the torchrun processes read it
        return load_config(os.path.join(ROOT, "configs", "tiny.yaml"), args(*a))

    def losses(run):
        return {m["step"]: m["loss"] for m in read_metrics(str(run)) if "loss" in m}

    whole = tmp_path / "whole"
    L.train(config(whole, 4))  # one process: plain, today's format
    assert not is_sharded_checkpoint(list_checkpoints(str(whole))[-1][1])

    two, store = tmp_path / "two", tmp_path / "store"
    _torchrun(2, tmp_path, args(two, 2, "train.max_steps=2", "log.ckpt_every=1", "log.keep_trainer_states=1",
                                f"log.remote=file://{store}"))
    (s1, first), (s2, ckpt) = list_checkpoints(str(two))
    assert is_sharded_checkpoint(ckpt) and not os.path.exists(os.path.join(ckpt, "model.safetensors"))
    for where in (ckpt, store / "checkpoints" / "step_000002"):
        for part in ("model", "optimizer"):  # each process wrote its own part; the store holds them all
            assert sorted(f for f in os.listdir(os.path.join(where, part)) if f.endswith(".distcp")) == \
                ["__0_0.distcp", "__1_0.distcp"], (where, part)
    for where in (first, store / "checkpoints" / "step_000001"):  # pruned: the weights stay, the optimizer goes
        assert os.path.isdir(os.path.join(where, "model")) and not os.path.exists(os.path.join(where, "optimizer"))
    verify_checkpoint(ckpt)  # checksummed, shards included
    verify_checkpoint(first)
    assert losses(two) == pytest.approx({s: losses(whole)[s] for s in (1, 2)}, rel=1e-5)

    one, four, again = tmp_path / "one", tmp_path / "four", tmp_path / "again"
    L.train(config(one, 4), resume=ckpt)
    _torchrun(4, tmp_path, [*args(four, 1), f"--resume=file://{store}"])  # fetched from the store first
    _torchrun(2, tmp_path, [*args(again, 2), f"--resume={list_checkpoints(str(whole))[0][1]}"])  # whole -> sharded
    for run in (one, four, again):  # (four's metrics begin with two's: a run fetched from its store brings its record)
        assert {3, 4} <= set(losses(run)), run
        for s in losses(run):
            assert abs(losses(run)[s] - losses(whole)[s]) <= 1e-5 * losses(whole)[s], (run, s)
    assert len([f for f in os.listdir(os.path.join(list_checkpoints(str(four))[-1][1], "model"))
                if f.endswith(".distcp")]) == 4

    out = export_run(str(two), str(tmp_path / "export"))
    sharded = read_safetensors(ckpt)  # the shards, read whole in one process
    hf = transformers_model(out).state_dict()
    assert set(sharded) == set(hf)
    for k, v in sharded.items():
        assert torch.equal(hf[k], v), k


# One step of the 360M preset, sharded over 2 processes: each holds half of the weights, and its peak
# memory is what smollm.training.device.memory_estimate says within 15%.
SCRIPT_360M = r"""
import json, os, sys
import torch, torch.distributed as dist
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
from test_device import measured_peak, micro_config
from smollm.training.device import memory_estimate

dist.init_process_group("gloo")
cfg = micro_config("model.preset=smollm2-360m", "model.kernels=torch", "parallel.strategy=fsdp", "train.micro_batch=1",
                   "data.seq_len=33")
cfg.data.seq_len -= 1
peak, loss, local = measured_peak(cfg, world=2, rank=dist.get_rank())
print(json.dumps({"rank": dist.get_rank(), "peak": peak, "loss": loss, "local_params": local,
                  "estimate": memory_estimate(cfg, torch.device("cpu"), world=2).total}), flush=True)
"""


def test_a_360m_step_sharded_over_two_processes(tmp_path):
    from smollm.config import get_preset

    script = tmp_path / "fsdp_360m.py"
    script.write_text(SCRIPT_360M)
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script), ROOT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert sorted(row["rank"] for row in rows) == [0, 1]
    n = get_preset("smollm2-360m").n_params
    whole = 16 * n  # one process: weights, gradients, AdamW's moments (fp32)
    assert sum(row["local_params"] for row in rows) == n
    for row in rows:
        assert abs(row["local_params"] - n / 2) <= 0.01 * n  # half the parameters each (up to padding)
        assert torch.isfinite(torch.tensor(row["loss"]))
        assert abs(row["estimate"] - row["peak"]) <= 0.15 * row["peak"], row
        assert row["peak"] < 0.7 * whole  # about half of one process's, with FSDP's gathered weights


def test_a_lost_process_stops_the_run_cleanly_and_it_resumes(tmp_path, dataset, gguf_path):
    """A process of a 2-process FSDP run is killed (its node lost): the other stops with one line naming
    the latest checkpoint, releases the run's lock, and the checkpoints written so far are whole and
    resume (here on one process)."""
    import signal
    import time

    import smollm.training.loop as L
    from smollm.checkpoint import list_checkpoints, verify_checkpoint
    from smollm.train_config import load_config
    from conftest import micro_run_overrides

    run = tmp_path / "run"
    args = micro_run_overrides(run, dataset, gguf_path, "parallel.strategy=fsdp", "optim.kind=adamw",
                               "train.micro_batch=2", "train.grad_accum=1", "train.max_steps=100000",
                               "log.ckpt_every=3", "log.eval_every=100000")
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             os.path.join(ROOT, "train.py"), *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and len(list_checkpoints(str(run))) < 2 and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None and list_checkpoints(str(run)), "no checkpoint before the deadline"
        ranks = {}
        for pid in os.listdir("/proc"):
            try:
                environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            except (OSError, ValueError):
                continue
            if b"TORCHELASTIC_RUN_ID" in b"".join(environ) and str(tmp_path).encode() in open(
                    f"/proc/{pid}/cmdline", "rb").read():
                ranks.update({int(v[5:]): int(pid) for v in environ if v.startswith(b"RANK=")})
        os.kill(ranks[1], signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert "error: a process of this run was lost (" in out and "; the run stopped. Its checkpoints are whole" in out
    assert not (run / "train.lock").exists()
    step, last = list_checkpoints(str(run))[-1]
    verify_checkpoint(last)
    cfg = load_config(os.path.join(ROOT, "configs", "tiny.yaml"),
                      [*args, "train.micro_batch=4", f"train.max_steps={step + 1}"])
    assert L.train(cfg, resume=str(run))["step"] == step + 1  # the lost run goes on, on one process


SCRIPT_SHARED = r"""
import os, sys
import torch.distributed as dist
from smollm.train_config import ConfigError
from smollm.training.parallel import Dist, check_shared_dir

dist.init_process_group("gloo")
d = Dist(dist.get_rank(), dist.get_world_size(), 0)
mine = sys.argv[1] if sys.argv[2] == "shared" or d.main else sys.argv[1] + "-elsewhere"  # another node's disk
os.makedirs(mine, exist_ok=True)
try:
    check_shared_dir(mine, d)
    line = f"rank {d.rank}: ok"
except ConfigError as e:
    line = f"rank {d.rank}: {e}"
os.write(1, (line + "\n").encode())  # one write: the two ranks share stdout
dist.destroy_process_group()

"""


@pytest.mark.parametrize("where", ["shared", "apart"])
def test_fsdp_needs_a_run_directory_every_process_sees(tmp_path, where):
    script = tmp_path / "shared_check.py"
    script.write_text(SCRIPT_SHARED)
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script), str(tmp_path / "run"), where], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = sorted(line for line in r.stdout.splitlines() if line.startswith("rank "))
    if where == "shared":
        assert lines == ["rank 0: ok", "rank 1: ok"]
    else:
        import socket

        assert len(lines) == 2 and all(f"log.out_dir: {tmp_path / 'run'}" in line and
                                       f"is not visible from every process ({socket.gethostname()} cannot see it)"
                                       in line for line in lines), lines
    assert [f for f in os.listdir(tmp_path / "run") if f.startswith(".shared-")] == []  # the probe removed


def test_a_failed_fetch_on_several_processes_stops_every_process_with_its_line(tmp_path):
    """--resume URL under torchrun: rank 0 alone fetches (four processes fetching into one directory raced);
    when it cannot, it says why in one line and the launch ends: the others waited for its answer on
    torchrun's store, neither fetching on their own nor hanging."""
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        os.path.join(ROOT, "train.py"), f"--resume=file://{tmp_path / 'empty'}",
                        f"log.out_dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert out.count("resume: fetching") == 1, out
    said = "holds no finished checkpoint with a trainer state"
    assert f"error: --resume: file://{tmp_path / 'empty'} {said}" in out, out
    assert not os.path.exists(tmp_path / "run")
