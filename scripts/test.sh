#!/bin/sh
# Starts every component the tests need, then runs lint, types and the whole test suite.
# A component that cannot start makes this fail; nothing is skipped silently.
set -eu
cd "$(dirname "$0")/.."
pg=$(scripts/postgres.sh)  # fails the run when PostgreSQL cannot start
CLOUDBROKER_TEST_PG=$(printf '%s\n' "$pg" | tail -n 1)
export CLOUDBROKER_TEST_PG
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/pytest -q "$@"
