#!/usr/bin/env bash
# Install qmcp-server into .venv and run the main job end to end on the embedded default:
# SQLite (in the per-user data directory; `qmcp info` says where) and the offline model — no API key needed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/qmcp demo "$@"
