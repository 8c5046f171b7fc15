#!/bin/sh
# The judge runs: ./predict.sh DATASETS_DIR OUT_JSON
# Extra arguments go to predict.py (see `./predict.sh --help`).
# POSIX sh (dash runs it as `sh predict.sh`; bash, busybox sh too): no bash needed.
set -eu

py="${PYTHON:-$(command -v python3 || command -v python || true)}"
if [ -z "$py" ]; then
  echo "predict.sh: no python3 or python on PATH (or set PYTHON)" >&2
  exit 2
fi
# this script's real folder (through symlinks, relative paths, or PATH as it was called; no readlink -f)
self="$0"
case "$self" in */*) ;; *) [ -e "$self" ] || self="$(command -v -- "$self" || echo "$self")" ;; esac
here="$("$py" -c 'import os, sys
sys.stdout.buffer.write(os.fsencode(os.path.dirname(os.path.realpath(sys.argv[1]))))' "$self")"
pyver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
# setup.sh installs the vendored wheels for this Python here; it goes first on the import path.
export PYTHONPATH="${here}/.deps/py${pyver}${PYTHONPATH:+:${PYTHONPATH}}"
# onnxruntime and numpy pick their own thread counts from predict.py's settings.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$py" "${here}/predict.py" "$@"
