# Sourced by the other scripts: run from the repository root with uv, installing uv with pip
# if the machine lacks it, and the workspace (uv.lock) if it is missing or out of date.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

UV_VERSION=0.13.8
PYTHON=${PYTHON:-python3}
# The interpreter itself, not a pyenv shim in front of it: uv checks the request against the
# interpreter of .venv, and warns of an "incompatible environment" when they differ.
export UV_PYTHON=${UV_PYTHON:-$("$PYTHON" -c 'import sys; print(sys.executable)')}
export UV_PYTHON_DOWNLOADS=never
# The scripts run the project's .venv; uv warns about any other active environment (an
# activated venv, pyenv-virtualenv), which it would ignore anyway.
unset VIRTUAL_ENV

if ! "$PYTHON" -m uv --version >/dev/null 2>&1; then
  echo "installing uv $UV_VERSION with pip" >&2
  "$PYTHON" -m pip install --quiet "uv==$UV_VERSION" \
    || "$PYTHON" -m pip install --quiet --user --break-system-packages "uv==$UV_VERSION"
fi

uv() { "$PYTHON" -m uv "$@"; }

uv sync --frozen --quiet
