# batchgen: `make demo` runs the example manifest against the local simulator,
# `make test` runs ruff, mypy, the import contracts (lint-imports, pyproject.toml's
# [tool.importlinter]) and pytest (the tiers in parallel, see below). Both create .venv
# when it is missing.
# One install stamp per set of dependencies: the demo needs only the runtime ones
# (`pip install -e .`); lint and test add the test extras (pytest, mypy, playwright...).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint bench schema clean

$(BIN)/python:
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "batchgen needs Python >= 3.11: run e.g. PY=python3.11 make $(MAKECMDGOALS)" >&2; exit 2; }
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $(RUN_STAMP)

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(TEST_STAMP) $(RUN_STAMP)

demo: $(RUN_STAMP)
	$(BIN)/python -m bench.demo
	@echo "batchgen is installed in $(VENV): run . $(BIN)/activate (then batchgen --help), or $(BIN)/batchgen"

lint: $(TEST_STAMP)
	$(BIN)/ruff check batchgen tests bench
	$(BIN)/ruff format --check batchgen tests bench
	$(BIN)/mypy batchgen tests bench
	$(BIN)/lint-imports

# The tiers in parallel: most tests wait on sockets and subprocesses, not on the CPU,
# so 4 workers beat 2 on a 2-core machine. Tests marked `serial` hold a wall-clock
# limit and run alone afterwards, where parallel workers cannot slow them down.
PYTEST_WORKERS ?= 4

test: lint
	bash tests/ensure_chromium.sh
	bash tests/ensure_postgres.sh
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) -m "not serial"
	$(BIN)/pytest -q -m serial

bench: $(TEST_STAMP)
	$(BIN)/python -m bench.run_all

schema: $(RUN_STAMP)
	$(BIN)/python -m batchgen.manifest.schema_gen

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .import_linter_cache demo-out
