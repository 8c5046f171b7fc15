#!/usr/bin/env bash
# The judge runs: ./predict.sh DATASETS_DIR OUT_JSON
# Extra arguments go to predict.py (see `./predict.sh --help`).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-$(command -v python3 || command -v python)}"
# setup.sh installs the vendored wheels here; it goes first on the import path.
export PYTHONPATH="${here}/.deps${PYTHONPATH:+:${PYTHONPATH}}"
# onnxruntime and numpy pick their own thread counts from predict.py's settings.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$py" "${here}/predict.py" "$@"
