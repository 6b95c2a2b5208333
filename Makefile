# `make run`: set up .venv and run the main job; `make test`: set up .venv and run lint + tests.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
RUN_DIR ?= runs/seed
CONFIG ?= seed
RUN_ARGS ?=

.PHONY: setup run test

$(BIN)/cifar-mlp: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "cifar-mlp needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[dev,postgres,onnx,tensorboard]"
	@touch $@

setup: $(BIN)/cifar-mlp

run: setup
	$(BIN)/cifar-mlp run --config $(CONFIG) --run-dir $(RUN_DIR) $(RUN_ARGS)

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest
