# Sourced by the other scripts: run from the repository root with uv, installing uv with pip
# if the machine lacks it, and the workspace (uv.lock) if it is missing or out of date.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

UV_VERSION=0.13.8
PYTHON=${PYTHON:-python3}
export UV_PYTHON=${UV_PYTHON:-$(command -v "$PYTHON")}
export UV_PYTHON_DOWNLOADS=never

if ! "$PYTHON" -m uv --version >/dev/null 2>&1; then
  echo "installing uv $UV_VERSION with pip" >&2
  "$PYTHON" -m pip install --quiet "uv==$UV_VERSION" \
    || "$PYTHON" -m pip install --quiet --user --break-system-packages "uv==$UV_VERSION"
fi

uv() { "$PYTHON" -m uv "$@"; }

uv sync --frozen --quiet
