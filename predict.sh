#!/usr/bin/env bash
# The judge runs: ./predict.sh DATASETS_DIR OUT_JSON
# Extra arguments go to predict.py (see `./predict.sh --help`).
set -euo pipefail
here="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"  # through symlinks too
py="${PYTHON:-$(command -v python3 || command -v python)}"
pyver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
# setup.sh installs the vendored wheels for this Python here; it goes first on the import path.
export PYTHONPATH="${here}/.deps/py${pyver}${PYTHONPATH:+:${PYTHONPATH}}"
# onnxruntime and numpy pick their own thread counts from predict.py's settings.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$py" "${here}/predict.py" "$@"
