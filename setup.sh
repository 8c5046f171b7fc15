#!/usr/bin/env bash
# The judge runs ./setup.sh with no arguments, offline, before predict.sh.
# Installs the wheels named in vendor/requirements-py<X.Y>.txt from vendor/ only
# (pip --no-index, never the network; pip's own config and PIP_* settings are
# ignored) into .deps/py<X.Y>/ inside this folder, where predict.sh looks.
# Idempotent: a second run with the same vendor/ files installs nothing.
# Ends by checking that the model loads (predict.py --check).
set -euo pipefail
here="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"  # through symlinks too
py="${PYTHON:-$(command -v python3 || command -v python)}"
pyver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
deps="${here}/.deps/py${pyver}"
req="${here}/vendor/requirements-py${pyver}.txt"
stamp="${deps}/.installed-from"

install_vendored() {
  local tmp="${here}/.deps/.py${pyver}.partial"
  rm -rf "${tmp}"
  mkdir -p "${tmp}"
  echo "setup.sh: installing ${req#"${here}/"} for Python ${pyver} (${py}) into ${deps} (no network)" >&2
  for var in $(compgen -e); do
    if [[ "${var}" == PIP_* ]]; then unset "${var}"; fi
  done
  PIP_CONFIG_FILE=/dev/null "$py" -m pip install --no-index --find-links "${here}/vendor" --no-deps \
    --only-binary=:all: --target "${tmp}" --no-compile --no-warn-script-location --no-cache-dir \
    --disable-pip-version-check --progress-bar off -r "${req}" >&2
  cp "${req}" "${tmp}/.installed-from"
  rm -rf "${deps}"
  mv "${tmp}" "${deps}"
}

if compgen -G "${here}/vendor/*.whl" >/dev/null; then
  if [[ ! -f "${req}" ]]; then
    have="$(cd "${here}/vendor" && ls requirements-py*.txt 2>/dev/null | tr '\n' ' ')"
    echo "setup.sh: vendor/ has no requirements-py${pyver}.txt for this Python (${py}); it has: ${have:-none}." \
      "Rebuild vendor/ with: python -m contest.vendor --python ${pyver}" >&2
    exit 1
  fi
  if [[ -f "${stamp}" ]] && cmp -s "${req}" "${stamp}"; then
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
