# The two Quick start commands (see README.rst). Both set up what they need on a fresh Debian.
.PHONY: run test lint bench clean

run:
	scripts/bootstrap.sh run
	.venv/bin/cloudbroker --config config/broker.toml serve

test:
	scripts/bootstrap.sh test
	scripts/test.sh

lint:
	.venv/bin/ruff check .
	.venv/bin/mypy

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
