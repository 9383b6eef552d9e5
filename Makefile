# medinfer: `make demo` and `make test` are the two commands a newcomer needs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint format test test-fast demo bench clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "python3.11 not found; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# torch first, at the pinned version, so that the project's range never picks another build. Which build pip
# takes depends on its index: PyPI's Linux wheel is the CUDA build; a CPU-only index or wheel folder in pip's
# configuration (as on our CI machines) gives the CPU build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint docker/Dockerfile docker/Dockerfile.cpu
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker/compose.yaml

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install lint
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not slow"

demo: install
	$(BIN)/medinfer demo

bench: install
	$(BIN)/python benchmarks/brats_infer.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache .ruff_cache .mypy_cache
