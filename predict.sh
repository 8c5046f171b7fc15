#!/bin/sh
# The judge runs: ./predict.sh DATASETS_DIR OUT_JSON
# Extra arguments go to predict.py (see `./predict.sh --help`).
# POSIX sh (dash runs it as `sh predict.sh`; bash, busybox sh too): no bash needed.
set -eu

# this script's folder, through symlinks and relative paths ($0 as it was called; no dirname needed)
self="$0"
case "$self" in */*) ;; *) [ -e "$self" ] || self="$(command -v -- "$self" || echo "$self")" ;; esac  # found on PATH
case "$self" in */*) ;; *) self="./$self" ;; esac
while [ -L "$self" ]; do
  link="$(readlink "$self" 2>/dev/null)" || { echo "predict.sh: cannot follow the symlink $self (no readlink?)" >&2; exit 2; }
  case "$link" in /*) self="$link" ;; *) self="${self%/*}/$link" ;; esac
done
here="${self%/*}"
here="$(cd "${here:-/}" && pwd -P)"

py="${PYTHON:-$(command -v python3 || command -v python || true)}"
if [ -z "$py" ]; then
  echo "predict.sh: no python3 or python on PATH (or set PYTHON)" >&2
  exit 2
fi
pyver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
# setup.sh installs the vendored wheels for this Python here; it goes first on the import path.
export PYTHONPATH="${here}/.deps/py${pyver}${PYTHONPATH:+:${PYTHONPATH}}"
# onnxruntime and numpy pick their own thread counts from predict.py's settings.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$py" "${here}/predict.py" "$@"
