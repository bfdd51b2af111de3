"""Every Triton kernel compiles ahead of time for real GPUs (sm_86 A10G, sm_90 H100) without
spilling: bench.aot does the compiling, in a process of its own without the interpreter."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `pytest` (not `python -m pytest`) puts tests/ first, not the repository
    sys.path.insert(0, ROOT)

from bench.results import read_rows  # noqa: E402


def test_every_kernel_compiles_for_sm86_and_sm90_without_spills(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, "-m", "bench.aot", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    *rows, summary = read_rows(str(tmp_path / "aot_cpu.jsonl"))  # it compiles on the host: the device is the CPU
    assert summary.is_summary and summary.headlines[0].startswith("all ") and "0 bytes spilled" in summary.headlines[0]
    rows = [r.flat() for r in rows]
    assert all(r["status"] == "ok" and r["local"] == 0 and r["reg"] > 0 for r in rows), rows
    assert {r["target"] for r in rows} == {"sm_86 (A10G)", "sm_90 (H100)"}

    # Every kernel that smollm/kernels/ launches (`_name[(grid)](...)`) is in the table, in fp32 and bf16.
    launched = set()
    for name in os.listdir(os.path.join(ROOT, "smollm", "kernels")):
        if name.endswith(".py"):
            launched |= set(re.findall(r"(_\w+)\[\(", open(os.path.join(ROOT, "smollm", "kernels", name)).read()))
    covered = {r["function"] for r in rows}
    assert launched and launched <= covered, f"kernels not compiled ahead of time: {launched - covered}"
    assert {r["kernel"].split("[")[1] for r in rows} == {"fp32]", "bf16]"}
