#!/bin/sh
# The judge runs ./setup.sh with no arguments, offline, before predict.sh.
# Installs the wheels named in vendor/requirements-py<X.Y>.txt from vendor/ only
# (pip --no-index, never the network; pip's own config and PIP_* settings are
# ignored) into .deps/py<X.Y>/ inside this folder, where predict.sh looks.
# Idempotent: a second run with the same vendor/ files installs nothing.
# Ends by checking that the model loads (predict.py --check).
# POSIX sh (dash runs it as `sh setup.sh`; bash, busybox sh too): no bash needed.
set -eu

py="${PYTHON:-$(command -v python3 || command -v python || true)}"
if [ -z "$py" ]; then
  echo "setup.sh: no python3 or python on PATH (or set PYTHON)" >&2
  exit 1
fi
# this script's real folder (through symlinks, relative paths, or PATH as it was called; no readlink -f)
self="$0"
case "$self" in */*) ;; *) [ -e "$self" ] || self="$(command -v -- "$self" || echo "$self")" ;; esac
here="$("$py" -c 'import os, sys
sys.stdout.buffer.write(os.fsencode(os.path.dirname(os.path.realpath(sys.argv[1]))))' "$self")"
pyver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
deps="${here}/.deps/py${pyver}"
req="${here}/vendor/requirements-py${pyver}.txt"
stamp="${deps}/.installed-from"

has_wheels() {
  for wheel in "${here}"/vendor/*.whl; do
    [ -e "$wheel" ] && return 0
  done
  return 1
}

install_vendored() {
  tmp="${here}/.deps/.py${pyver}.partial"
  rm -rf "${tmp}"
  mkdir -p "${tmp}"
  echo "setup.sh: installing ${req#"${here}/"} for Python ${pyver} (${py}) into ${deps} (no network)" >&2
  for var in $(env | sed -n 's/^\(PIP_[A-Za-z0-9_]*\)=.*/\1/p'); do
    unset "${var}"
  done
  PIP_CONFIG_FILE=/dev/null "$py" -m pip install --no-index --find-links "${here}/vendor" --no-deps \
    --only-binary=:all: --target "${tmp}" --no-compile --no-warn-script-location --no-cache-dir \
    --disable-pip-version-check --progress-bar off -r "${req}" >&2
  cp "${req}" "${tmp}/.installed-from"
  rm -rf "${deps}"
  mv "${tmp}" "${deps}"
}

if has_wheels; then
  if [ ! -f "${req}" ]; then
    have="$(cd "${here}/vendor" && ls requirements-py*.txt 2>/dev/null | tr '\n' ' ' || true)"
    echo "setup.sh: vendor/ has no requirements-py${pyver}.txt for this Python (${py}); it has: ${have:-none}." \
      "Rebuild vendor/ with: python -m contest.vendor --python ${pyver}" >&2
    exit 1
  fi
  if [ -f "${stamp}" ] && cmp -s "${req}" "${stamp}"; then
    echo "setup.sh: vendored wheels already installed for Python ${pyver} in ${deps}" >&2
  else
    install_vendored
  fi
  echo "setup.sh: installed for Python ${pyver} in ${deps}:" >&2
  (cd "${deps}" && for d in ./*.dist-info; do d="${d#./}"; echo "  ${d%.dist-info}"; done) >&2
else
  echo "setup.sh: vendor/ has no wheels (a development checkout): using the packages of ${py}" >&2
fi

PYTHONPATH="${deps}${PYTHONPATH:+:${PYTHONPATH}}" "$py" "${here}/predict.py" --check
