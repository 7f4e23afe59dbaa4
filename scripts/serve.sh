#!/usr/bin/env bash
# Serve the bundled example models (examples/models) on port 50051, one worker per CPU.
# Extra arguments go to tms-server, e.g. `bash scripts/serve.sh --workers 2 --port 8001`.
source "$(dirname "$0")/_bootstrap.sh"
exec "$PYTHON" -m uv run --frozen --no-sync tms-server --models examples/models "$@"
