# batchgen: `make demo` runs the example manifest against the local simulator,
# `make test` runs ruff, mypy and pytest. Both create .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench schema clean

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "batchgen needs Python >= 3.11: run e.g. PY=python3.11 make $(MAKECMDGOALS)" >&2; exit 2; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m bench.demo

lint: $(STAMP)
	$(BIN)/ruff check batchgen tests bench
	$(BIN)/ruff format --check batchgen tests bench
	$(BIN)/mypy batchgen tests bench

test: lint
	bash tests/ensure_chromium.sh
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

schema: $(STAMP)
	$(BIN)/python -m batchgen.schema_gen

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache demo-out
