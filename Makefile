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

# The unit tests on both cores (pytest-xdist, a test file per worker so module fixtures start once), then the
# multi-process federations one at a time: they time rounds and kill processes, and some share a federation
# (tests/integration/conftest.py's SHARED). Both parts run, and either failing fails the target.
test: setup
	$(BIN)/python -m pytest -m "not slow" -n 2 --dist loadfile; unit=$$?; \
	$(BIN)/python -m pytest -m slow; slow=$$?; \
	test $$unit -eq 0 && test $$slow -eq 0

# ruff: lint (with import sorting) and the formatter's check; CI runs this before the tests.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
