# Each target sets up its own virtual environment first (idempotent).
# TORCH_SPEC: torch==2.13.0 (the CPU build where a local CPU wheel of it is on pip's path, as on the
# development machine; from PyPI on Linux it is the CUDA build, which runs on the CPU as well).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
CORES ?= all
PYTEST_ARGS ?=
BIN := $(VENV)/bin

.PHONY: venv test test-slow report clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[test,slurm,hf]'
	touch $@

test: venv  ## fast tests (the default run; slow end-to-end tests excluded)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: venv  ## the slow end-to-end tests only
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

report: venv  ## the whole default experiment: data, training, dumps, analyses, report
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) --profile workflow/profiles/default

clean:
	rm -rf $(VENV) .pytest_cache
