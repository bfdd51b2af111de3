#!/usr/bin/env bash
# Everything on a GPU in one command, offline, with only this repository and the machine's own
# torch + triton (transformers and liger-kernel are used when installed; their rows say so when not):
#   1. check the GPU;
#   2. the kernel parity tests, compiled on it (the interpreter cannot catch compiler bugs);
#   3. bench/report.py: kernels and training step -> bench/results/<gpu-name>.{md,json,png};
#   4. bench/parity.py (max errors per kernel and dtype on this GPU).
# Budget: under 8 minutes on an H100. Usage: bench/gpu.sh   (PYTHON=... to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then py=$PYTHON; elif [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$SECONDS

echo "== 1. GPU"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$py" - <<'PY'
import torch, triton
assert torch.cuda.is_available(), "bench/gpu.sh: torch sees no GPU (a CUDA build of torch and a driver are needed)"
print(f"torch {torch.__version__}, triton {triton.__version__}, {torch.cuda.get_device_name()}")
PY

echo "== 2. kernel parity tests on the GPU"
tests=(tests/test_rmsnorm.py tests/test_rope.py tests/test_swiglu.py tests/test_cross_entropy.py
       "tests/test_model.py::test_triton_path_matches_torch_path" "tests/test_model.py::test_set_kernels_switches_every_module"
       "tests/test_model.py::test_compile_fullgraph_triton_path")
deselect=()
"$py" -c "import liger_kernel" 2>/dev/null || deselect=(-k "not liger")
log=$(mktemp)
set +e
"$py" -m pytest -q -p no:cacheprovider "${tests[@]}" "${deselect[@]}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
summary=$(grep -E "(passed|failed|error)" "$log" | tail -1)
[ "${#deselect[@]}" -gt 0 ] && summary="$summary (liger-kernel not installed: its comparison deselected)"
[ "$status" -eq 0 ] || summary="FAILED: $summary"

echo "== 3. benchmarks"
"$py" bench/report.py --tests-log "$summary"

echo "== 4. parity report"
"$py" bench/parity.py || echo "bench/parity.py failed"

echo "bench/gpu.sh: done in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s; tests: $summary"
exit "$status"
