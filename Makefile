# Two commands matter: `make run` (set up, then dvc repro) and `make test`; `make serve` to try the model.
PYTHON ?= python3
VENV ?= .venv
REQUIREMENTS ?= requirements-cpu.txt
BIN := $(VENV)/bin
# pytest workers for `make test` (pytest-xdist; each takes whole test files, so a file's
# module fixtures are built once; the slow files first: tests/conftest.py SLOW_FILES_FIRST).
# TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2

.PHONY: setup run serve test lint plots clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

setup: $(BIN)/python
	$(BIN)/pip install -q -r $(REQUIREMENTS) -r requirements-dev.txt

run: setup
	$(BIN)/python -m stages.split --check
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

# The try-it page on http://127.0.0.1:8000/ (exports the model first if needed; SERVE_ARGS="--port 9000").
serve: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro export
	$(BIN)/python -m stages.serve $(SERVE_ARGS)

test: setup
	$(BIN)/ruff check stages tests bench tools
	$(BIN)/ruff format --check stages tests bench tools
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: setup
	$(BIN)/ruff check stages tests bench tools
	$(BIN)/ruff format --check stages tests bench tools

# Workspace vs HEAD as one self-contained page (works offline: .dvc/plots/offline.html).
plots: setup
	$(BIN)/dvc plots diff HEAD -o dvc_plots

clean-venv:
	rm -rf $(VENV)
