"""The smoke preset (configs/smoke.yaml), the README's first run, as a user runs it: the whole loop
(prepare, train, checkpoints, samples, plot) in one process, its output going to a file (not a
terminal: plain lines, no progress bar's carriage returns)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_smoke_preset_runs_the_whole_loop(tmp_path):
    run, data = tmp_path / "runs" / "smoke", tmp_path / "data" / "stdlib"
    with open(tmp_path / "out.log", "w") as log:
        done = subprocess.run([sys.executable, "train.py", "--config", "configs/smoke.yaml", f"log.out_dir={run}",
                               f"data.path={data}"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=1200)
    out = (tmp_path / "out.log").read_text()
    assert done.returncode == 0, out[-3000:]
    assert "\r" not in out  # plain lines in a log file
    assert (data / "meta.json").is_file() and json.loads((data / "meta.json").read_text())["complete"]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = {m["step"]: m["val_loss"] for m in metrics if "val_loss" in m}
    assert sorted(val) == [0, 50, 100] and val[100] < val[0] - 2  # it learns
    assert sorted(os.listdir(run / "checkpoints")) == ["latest", "step_000050", "step_000100"]
    samples = (run / "samples.md").read_text()
    assert "## Step 50" in samples and "## Step 100" in samples
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| val loss" in (run / "train.log").read_text()
    assert out.rstrip().splitlines()[-1].startswith("done: step 100")
