#!/usr/bin/env bash
# Set up glmtune in a virtual environment (default .venv; VENV=path to choose).
# torch is installed only when the environment cannot import it. Choose the
# build with TORCH_SPEC, e.g.
#   TORCH_SPEC="torch==2.13.0" (default: the CPU wheel on these machines)
#   TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
# The venv sees the system site-packages, so a torch you already installed
# system-wide is reused rather than replaced.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv --system-site-packages "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q ${TORCH_SPEC:-torch==2.13.0}
fi
# PIP_EXTRA: more requirement specs installed with glmtune (scripts/test-floor.sh pins the floor this way).
# shellcheck disable=SC2086
"$VENV/bin/pip" install -q -e ".[test]" ${PIP_EXTRA:-}
"$VENV/bin/python" -c "import torch, glmtune; print(f'glmtune {glmtune.__version__} ready (torch {torch.__version__})')"
