"""register_inductor_fallbacks: before a compile, inductor gets our ops' fallback lowerings up front, so torch <
2.13 never formats the IR of their arguments for a log line it drops (the text of the whole graph upstream,
~10x longer per layer: the 30-layer triton path never finished compiling on the H200 with torch 2.11)."""

import json
import os
import subprocess
import sys

import torch

from smollm.kernels import INDUCTOR_LOGS_LAZILY, _release

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EAGER_LOG = _release(torch.__version__) < INDUCTOR_LOGS_LAZILY

# A small chain of our ops (the model's shape: norms feeding the fused cross-entropy), compiled without the
# caches (a cache hit skips lowering); counts inductor's calls of operator_str and reads the layout constraint
# each op was lowered with.
SCRIPT = """
import json, sys
import torch
import torch._inductor.exc as exc
from torch._inductor.lowering import lowerings, maybe_layout_constraints
import smollm.kernels as K
from smollm.kernels.cross_entropy import linear_cross_entropy
from smollm.kernels.rmsnorm import add_rms_norm, rms_norm

calls = []
real = exc.OperatorIssue.operator_str
exc.OperatorIssue.operator_str = staticmethod(lambda *a: calls.append(1) or real(*a))
registered = K.register_inductor_fallbacks() if sys.argv[1] == "fix" else None

def f(x, w, out, t):
    h, n = x, rms_norm(x, w)
    for _ in range(3):
        h, n = add_rms_norm(h, n, w)  # nothing but our ops: no C++ kernel to compile
    return linear_cross_entropy(n, out, t)

g = torch.Generator().manual_seed(0)
x, w, out = torch.randn(8, 16, generator=g), torch.rand(16, generator=g) + 0.5, torch.randn(32, 16, generator=g)
t = torch.randint(0, 32, (8,), generator=g)
with torch._inductor.config.patch(force_disable_caches=True, compile_threads=1):
    loss = torch.compile(f, fullgraph=True)(x, w, out, t)
constraints = {str(op): getattr(maybe_layout_constraints(op), "__name__", None)
               for op in lowerings if str(op).startswith("smollm.")}
print(json.dumps({"operator_str_calls": len(calls), "registered": registered, "constraints": constraints,
                  "loss": loss.item(), "eager_loss": f(x, w, out, t).item()}))
"""


def run(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT}, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_compile_never_formats_ir_for_the_implicit_fallback_log():
    fixed = run("fix")
    assert fixed["operator_str_calls"] == 0
    assert fixed["loss"] == fixed["eager_loss"]
    if not EAGER_LOG:  # torch >= 2.13 formats that log line lazily: nothing to register
        assert fixed["registered"] == 0
        return
    assert fixed["registered"] == len(fixed["constraints"]) >= 9  # every smollm op, forward and backward
    # Without it, this torch formats the arguments of each op it falls back on, and picks the same layout
    # constraint for it as we registered.
    plain = run("plain")
    assert plain["operator_str_calls"] >= 3  # rms_norm_fwd, add_rms_norm_fwd, linear_cross_entropy
    assert plain["constraints"] and all(fixed["constraints"][op] == c for op, c in plain["constraints"].items())
    assert plain["loss"] == fixed["loss"]
