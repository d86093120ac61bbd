# The two commands a newcomer needs (README.md): `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.serve-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[examples]'
	touch $@

$(VENV)/.test-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[examples,test]'
	touch $@

.PHONY: serve test lint
serve: $(VENV)/.serve-deps  ## run Inferoxy on the example models (embedded defaults)
	$(BIN)/inferoxy serve --models examples/models.yaml

lint: $(VENV)/.test-deps
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint  ## lint, type-check and run the whole test suite
	$(BIN)/python -m pytest -q
