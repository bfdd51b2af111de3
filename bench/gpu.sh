#!/usr/bin/env bash
# The GPU check, in one command, offline, with only this repository and the machine's own Python (torch +
# triton; transformers, liger-kernel and pytest are used when installed, and their rows say so when not).
#
#   bench/gpu.sh              python -m bench.gpu_check under a 450 s budget, correctness first:
#                             (e) the fp32-output GEMM probe and the kernel parity tests on the GPU, (b) one
#                             training step, compiled: ours triton path, ours torch path, transformers (each
#                             row stopped at 240 s, --row-cap-s), (c) a profile of one triton-path step,
#                             (a) bf16 GEMM and copy ceilings, (d) each op fwd+bwd at 16,384 tokens.
#                             Rows go to ${OUT:-bench/results}/gpu_check_<gpu>.jsonl (one bench.results.Row per
#                             line, written as it is measured; <gpu> as bench.results.device_slug names it:
#                             a10g, h100, ...) and .md (re-rendered after every row), the console to
#                             gpu_check.log there (gpu_check.log.partial while it runs): a run killed at
#                             any point keeps every row before the kill.
#   bench/gpu.sh --full       the same, then the long route: the parity tests under pytest, bench.report
#                             (kernels at 3 sizes, every training-step row, the 24 GB fit search) and
#                             bench.parity, into the same folder.
#   bench/gpu.sh --cpu-smoke  no GPU needed: the same check on the CPU at tiny sizes (Triton runs in its
#                             interpreter, the timings mean nothing; rows in gpu_check_cpu.*).
#   Any other argument goes to bench.gpu_check (--budget-s 300, --sections e b (in that order), --steps 20, ...).
#
# Without a GPU (and without --cpu-smoke) it refuses at once with exit 2, leaving no file. PYTHON=... picks
# the interpreter (default .venv/bin/python, else python3). SMOLLM_COMMIT=<sha> stamps the rows (a copy of
# the tree on a lent machine has no git of this checkout; set, it wins over git).
# Give the command a timeout of at least 480 s: a row still running at 470 s (budget + 20) is written as
# skipped and the check exits by itself.
# Exit status: gpu_check's: 0 every row ran or was skipped for a stated reason, 1 a row failed (or, with
# --full, a later step failed), 2 no GPU. No `set -e`: one failure never stops the rows after it.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then py=$PYTHON; elif [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out=${OUT:-bench/results}
made_out=0
[ -d "$out" ] || { mkdir -p "$out" && made_out=1; }
full=0 smoke=0 pass=()
for arg in "$@"; do
  case $arg in
    --full) full=1 ;;
    --cpu-smoke) smoke=1 ;;
    *) pass+=("$arg") ;;
  esac
done
if [ "$smoke" = 1 ]; then
  export CUDA_VISIBLE_DEVICES=""  # the CPU, even on a machine with a GPU
  flags=(--preset tiny --layers 1 --batch 2 --seq 32 --steps 1 --warmup 1 --gemm-n 256 --copy-mib 8
         --op-tokens 256 --parity measure --parity-tokens 16 --budget-s 900)
else
  flags=(--require-gpu)
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
start=$SECONDS
# The console goes to a .partial log, renamed when the check ends: a refused start (no GPU) leaves
# nothing behind, not even over the log of an earlier run.
"$py" -m bench.gpu_check --out "$out" "${flags[@]}" ${pass[@]+"${pass[@]}"} 2>&1 | tee "$out/gpu_check.log.partial"
status=${PIPESTATUS[0]}
if [ "$status" = 2 ]; then  # no GPU: refused, nothing measured
  rm -f "$out/gpu_check.log.partial"
  [ "$made_out" = 0 ] || rmdir "$out"
  exit 2
fi
mv -f "$out/gpu_check.log.partial" "$out/gpu_check.log"
echo "bench/gpu.sh: check done in $((SECONDS - start)) s, exit $status; rows in $out/gpu_check_*.jsonl and .md"

if [ "$full" = 1 ]; then
  echo "== --full: kernel parity tests on the GPU (pytest)"
  summary="pytest not installed"
  if "$py" -c "import pytest" 2>/dev/null; then
    # the kernel files whole; of tests/test_model.py the triton-path and compile tests (the rest needs the GGUF)
    sel="not test_model or triton_path_matches or compile_fullgraph or set_kernels or one_graph"
    liger=1
    "$py" -c "import liger_kernel" 2>/dev/null || { liger=0; sel="not liger and ($sel)"; }
    log=$(mktemp)
    "$py" -m pytest -q -p no:cacheprovider tests/test_rmsnorm.py tests/test_rope.py tests/test_swiglu.py \
      tests/test_cross_entropy.py tests/test_model.py -k "$sel" 2>&1 | tee "$log"
    tests_status=${PIPESTATUS[0]}
    summary=$(grep -E "(passed|failed|error)" "$log" | tail -1)
    [ "$liger" = 0 ] && summary="$summary (liger-kernel not installed: its comparison deselected)"
    [ "$tests_status" = 0 ] || { summary="FAILED: $summary"; status=1; }
  fi
  echo "== --full: bench.report"
  "$py" -m bench.report --out "$out" --tests-log "$summary" || { echo "bench.report failed"; status=1; }
  echo "== --full: bench.parity"
  "$py" -m bench.parity --out "$out" || { echo "bench.parity failed"; status=1; }
  echo "bench/gpu.sh --full: done in $((SECONDS - start)) s; tests: $summary"
fi
exit "$status"
