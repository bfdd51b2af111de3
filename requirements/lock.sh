#!/usr/bin/env bash
# Refresh the locks of tested versions (requirements/cpu.lock, requirements/cuda.lock) from the newest
# releases that pyproject.toml's ranges allow, with uv's resolver (`uv pip compile`, a dev dependency):
#
#   requirements/lock.sh          then run the tests (./setup.sh && .venv/bin/python -m pytest) and commit
#                                 the locks only if they pass: a lock records what CI last passed with.
#
# One lock per kind of machine, since torch's own dependencies differ: cpu.lock against torch's CPU build
# (no nvidia-* packages), cuda.lock against PyPI's Linux build (CUDA, with its nvidia-* packages). torch
# itself is left out of both: setup.sh installs it first (TORCH_VERSION there; where it comes from depends
# on the machine), then the lock. Python 3.11 on x86-64 Linux, the machines CI and the developers use.
set -euo pipefail
cd "$(dirname "$0")/.."
torch_version=$(sed -n 's/^TORCH_VERSION=//p' setup.sh)
cpu_index=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
uv=(.venv/bin/python -m uv)
common=(pip compile pyproject.toml --extra dev --extra app --extra remote --python-version 3.11
        --python-platform x86_64-manylinux_2_28 --no-emit-package torch --quiet
        --custom-compile-command "requirements/lock.sh")
constraints=$(mktemp); trap 'rm -f "$constraints"' EXIT

# The CPU build: from PyTorch's CPU index, or a local folder of wheels (PIP_FIND_LINKS) that holds it.
echo "torch==${torch_version}+cpu" > "$constraints"
where=(); [ -n "${PIP_FIND_LINKS:-}" ] && where=(--find-links "$PIP_FIND_LINKS")
if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$cpu_index/torch/" 2>/dev/null; then
  where+=(--extra-index-url "$cpu_index" --index-strategy unsafe-best-match)
fi
"${uv[@]}" "${common[@]}" --constraint "$constraints" ${where[@]+"${where[@]}"} -o requirements/cpu.lock
# The CUDA build: PyPI's.
echo "torch==${torch_version}" > "$constraints"
"${uv[@]}" "${common[@]}" --constraint "$constraints" --no-find-links -o requirements/cuda.lock 2>/dev/null \
  || "${uv[@]}" "${common[@]}" --constraint "$constraints" -o requirements/cuda.lock
echo "requirements/lock.sh: torch ${torch_version}; $(grep -c '==' requirements/cpu.lock) packages in cpu.lock," \
     "$(grep -c '==' requirements/cuda.lock) in cuda.lock"
