#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install scoredist[dev] into it.
# torch first: if the venv has no torch yet, take the CPU wheel (from this machine's wheel folder when there is one,
# else PyTorch's CPU index) so that pip never pulls a multi-GB CUDA build. GPU users: install your CUDA torch into
# the venv first; a torch that is already there is kept (pyproject asks for a range).
set -euo pipefail
case "${1:-}" in -h | --help) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; echo "usage: bash scripts/install.sh [VENV_DIR]   (default .venv)"; exit 0 ;; esac
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  wheel=$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -n 1 || true)
  if [ -n "$wheel" ]; then
    "${PIP[@]}" "$wheel"
  else
    "${PIP[@]}" "torch>=2.4,<2.15" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
"${PIP[@]}" -e ".[dev]"
