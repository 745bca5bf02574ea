# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv on first use; torch is pinned to the CPU build first so that pip
# never pulls a multi-GB CUDA build (see README "Installation").
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export DO_NOT_TRACK = 1

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install "$(TORCH_SPEC)"
	$(BIN)/pip install -e ".[test]"
	touch $(STAMP)

.PHONY: install demo test bench experiment
install: $(STAMP)

demo: $(STAMP)
	$(BIN)/metnet demo

# PREFECT_HOME in a fresh temp folder: tests start their own ephemeral Prefect server.
test: $(STAMP)
	PREFECT_HOME=$$(mktemp -d) $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/model.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/forecast.py

experiment: $(STAMP)
	$(BIN)/python scripts/real_data_experiment.py
