# Two commands: `make demo` sets up and runs the quickstart experiment; `make test` sets up and runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
# Offline workspaces keep MNIST beside the repository; elsewhere ./data is used (torchvision downloads it).
ifeq ($(FEDMI_DATA_ROOT),)
  ifneq ($(wildcard ../shared/data/MNIST/raw),)
    export FEDMI_DATA_ROOT := $(abspath ../shared/data)
  endif
endif

.PHONY: setup demo test bench lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/fedmi run quickstart

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) bench/bench_core.py --quick

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
