# The two commands of the README. Each sets up its own virtual environment first.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test setup lint

$(BIN)/fedcare: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: pip then takes the CPU wheel and never pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[all,test]"
	touch $@

setup: $(BIN)/fedcare

demo: setup
	$(BIN)/fedcare demo

test: setup
	$(BIN)/python -m pytest

# ruff: lint (with import sorting) and the formatter's check; CI runs this before the tests.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
