# lorafleet: `make run` (the demo) and `make test` (the whole suite) each set up .venv first.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SCENARIO ?= examples/scenarios/saturated-a100.yaml

.PHONY: run test test-fast lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,lint]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/lorafleet simulate $(SCENARIO)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check twin planner gateway tests bench
	$(BIN)/ruff format --check twin planner gateway tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/twin_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
