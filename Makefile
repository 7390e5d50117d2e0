# Two commands get a newcomer going: `make run` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Test processes: most tests wait on real services and subprocesses, so two share two cores well.
TEST_WORKERS ?= 2

.PHONY: run test lint bench check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP) ## run the service with the example tasks on SQLite, reloading changed task files
	SCHEDULER_RELOAD=$${SCHEDULER_RELOAD:-true} $(BIN)/scheduler run

test: $(STAMP) ## lint, type-check and run the test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup

check: $(STAMP) ## validate task files and configuration
	$(BIN)/scheduler check

# The measured processes run in a virtualenv with the runtime dependencies only, as shipped.
BENCH_VENV := .venv-bench

bench: $(STAMP) ## benchmarks against raw APScheduler
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet --force-reinstall --no-deps .
	$(BENCH_VENV)/bin/python -m pip install --quiet .
	BENCH_PYTHON=$(CURDIR)/$(BENCH_VENV)/bin/python $(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .mypy_cache .ruff_cache data
