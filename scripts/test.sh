#!/bin/sh
# Starts every component the tests need, then runs lint, types and the whole test suite.
# A component that cannot start makes this fail; nothing is skipped silently.
set -eu
cd "$(dirname "$0")/.."
CLOUDBROKER_TEST_PG=$(scripts/postgres.sh)
export CLOUDBROKER_TEST_PG
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/pytest -q "$@"
