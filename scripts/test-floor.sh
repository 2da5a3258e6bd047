#!/usr/bin/env bash
# CI's second job: prove the dependency floor in pyproject.toml. A separate venv (default .venv-floor; VENV=path
# to choose) gets the lowest transformers/peft/accelerate that pyproject allows, then runs a representative
# subset of the tests (config, every method, official LoRA/P-Tuning numerics, a short training run).
# Keep FLOOR in step with the ">=" bounds in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-floor}"
FLOOR="transformers==5.24.0 peft==0.18.0 accelerate==1.7.0"
VENV="$VENV" PIP_EXTRA="$FLOOR" bash scripts/setup.sh
"$VENV/bin/python" -c "import transformers, peft, accelerate; print('floor:', 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  tests/test_config.py tests/test_config_official.py tests/test_methods_lora.py tests/test_methods_ptuning.py \
  tests/test_train_loop.py
