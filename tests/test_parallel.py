"""smollm/training/parallel.py: FSDP2 on two CPU processes (gloo) trains as one process does."""

import json
import os
import subprocess
import sys

import pytest

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
model = SmolLM(cfg)
unsharded = sum(p.numel() for p in model.parameters())
names = list(model.state_dict())
if world > 1:
    shard(model, checkpoint_activations=sys.argv[1] == "1")
assert list(model.state_dict()) == names, "shard renamed parameters"
local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())
opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
tokens = torch.randint(0, cfg.vocab_size, (4, 33), generator=torch.Generator().manual_seed(1))  # learned by heart
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


def _run(tmp_path, world: int, checkpointing: bool) -> dict:
    script = tmp_path / "fsdp_check.py"
    script.write_text(SCRIPT)
    launch = [sys.executable] if world == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  f"--nproc_per_node={world}"]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([*launch, str(script), "1" if checkpointing else "0"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("checkpointing", [False, True])
def test_fsdp_on_gloo_matches_one_process(tmp_path, checkpointing):
    """fp32: the same losses within 1e-5 (with activation checkpointing too), each rank holding half
    of the parameters."""
    one, two = _run(tmp_path, 1, False), _run(tmp_path, 2, checkpointing)
    for a, b in zip(one["losses"], two["losses"], strict=True):
        assert abs(a - b) <= 1e-5 * abs(a), (one["losses"], two["losses"])
    assert one["losses"][-1] < one["losses"][0]  # it trains
    assert two["local_params"] <= one["params"] // 2 + 1024  # dim-0 shards: half, up to padding
