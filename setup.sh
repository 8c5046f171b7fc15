#!/usr/bin/env bash
# The judge runs ./setup.sh with no arguments, offline, before predict.sh.
# Installs the wheels in vendor/ (never the network) into .deps/ inside this
# folder, once per Python version, then checks that the model loads.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-$(command -v python3 || command -v python)}"
deps="${here}/.deps"
pyver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
stamp="${deps}/.installed-py${pyver}"

if compgen -G "${here}/vendor/*.whl" >/dev/null; then
  if [[ -f "${stamp}" ]] && diff -q <(ls "${here}/vendor") "${stamp}" >/dev/null; then
    echo "setup.sh: vendored wheels already installed for Python ${pyver} in ${deps}" >&2
  else
    rm -rf "${deps}"
    mkdir -p "${deps}"
    echo "setup.sh: installing from ${here}/vendor for Python ${pyver} (no network)" >&2
    PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 "$py" -m pip install --no-index \
      --find-links "${here}/vendor" --target "${deps}" --no-warn-script-location \
      --no-compile -r "${here}/vendor/requirements-py${pyver}.txt" >&2
    ls "${here}/vendor" > "${stamp}"
    echo "setup.sh: installed:" >&2
    (cd "${deps}" && ls -d ./*.dist-info | sed 's|^\./|  |; s|\.dist-info$||') >&2
  fi
else
  echo "setup.sh: vendor/ has no wheels (a development checkout): using the packages of ${py}" >&2
fi

PYTHONPATH="${deps}${PYTHONPATH:+:${PYTHONPATH}}" "$py" "${here}/predict.py" --check
