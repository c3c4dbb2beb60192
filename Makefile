# Two commands matter: `make run` (set up, then dvc repro) and `make test`; `make serve` to try the model.
PYTHON ?= python3
VENV ?= .venv
# The whole environment, pinned with hashes (`make lock` writes locks/ from the requirements-*.txt):
# locks/cpu.txt (default), gpu.txt, cpu-s3.txt, gpu-s3.txt (with the S3 extra), cpu-ray.txt, gpu-ray.txt
# (with the Ray extra); test.txt for `make test`.
LOCK ?= locks/cpu.txt
BIN := $(VENV)/bin
# Locks are for Linux x86_64 and this Python; uv resolves them (pinned, installed into the venv).
LOCK_PYTHON ?= 3.11
UV_VERSION ?= 0.13.9
# `make lock LOCK_FLAGS=--upgrade`: newest versions the direct pins allow (default: keep the locked ones).
LOCK_FLAGS ?=
# pytest workers for `make test` (pytest-xdist; each takes whole test files, so a file's
# module fixtures are built once; the slow files first: tests/conftest.py SLOW_FILES_FIRST).
# TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2

.PHONY: setup setup-test run serve test lint plots docs lock clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

setup: $(BIN)/python
	$(BIN)/pip install -q --require-hashes -r $(LOCK)

# The pipeline (CPU) with the S3 extra and the test and lint tools: what `make test` and CI use.
setup-test: $(BIN)/python
	$(BIN)/pip install -q --require-hashes -r locks/test.txt

run: setup
	$(BIN)/python -m stages.split --check
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

# The try-it page on http://127.0.0.1:8000/ (exports the model first if needed; SERVE_ARGS="--port 9000").
serve: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro export
	$(BIN)/python -m app.serve $(SERVE_ARGS)

test: setup-test
	$(BIN)/ruff check stages app tests bench tools
	$(BIN)/ruff format --check stages app tests bench tools
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: setup-test
	$(BIN)/ruff check stages app tests bench tools
	$(BIN)/ruff format --check stages app tests bench tools

# Every figure in README.md and docs/ from metrics/*.json and bench/*.json (tools/docs.py).
docs: setup
	$(BIN)/python -m tools.docs

# Workspace vs HEAD as one self-contained page (works offline: .dvc/plots/offline.html).
plots: setup
	$(BIN)/dvc plots diff HEAD -o dvc_plots

# Re-resolve every lock from the direct requirements (after editing a requirements-*.txt). The test
# set is resolved first and constrains the others, so a package has one version in every lock.
LOCK_SETS := cpu:requirements-cpu.txt cpu-s3:requirements-cpu.txt+requirements-s3.txt \
	gpu:requirements-gpu.txt gpu-s3:requirements-gpu.txt+requirements-s3.txt \
	cpu-ray:requirements-cpu.txt+requirements-ray.txt gpu-ray:requirements-gpu.txt+requirements-ray.txt
UV_COMPILE = $(BIN)/uv pip compile -q --generate-hashes --python-version $(LOCK_PYTHON) \
	--python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock"
lock: $(BIN)/python
	$(BIN)/pip install -q uv==$(UV_VERSION)
	mkdir -p locks
	$(UV_COMPILE) $(LOCK_FLAGS) requirements-dev.txt -o locks/test.txt
	for set in $(LOCK_SETS); do \
		$(UV_COMPILE) $(LOCK_FLAGS) -c locks/test.txt $$(echo $${set#*:} | tr + ' ') -o locks/$${set%%:*}.txt || exit 1; \
	done

clean-venv:
	rm -rf $(VENV)
