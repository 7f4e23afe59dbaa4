#!/usr/bin/env bash
# Everything CI checks, in order: formatting, lint, types, the proto, generated code, tests.
# Extra arguments go to pytest, e.g. `bash scripts/check.sh -k codec`.
source "$(dirname "$0")/_bootstrap.sh"

step() { echo "==> $*" >&2; "$@"; }
run() { step "$PYTHON" -m uv run --frozen --no-sync "$@"; }

run ruff format --check .
run ruff check .
run mypy
run buf lint
run buf breaking --against '.git#branch=main'  # FILE rules (buf.yaml) vs. the main branch
run buf format --exit-code --diff
run python codegen/generate.py --check
run pytest "$@"
