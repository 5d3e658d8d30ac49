# Everything installs itself: a .venv, torch==2.13.0 first (so pip never pulls a CUDA build), then instaseg[dev].
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.instaseg-installed

.PHONY: install demo test test-slow lint bench clean

$(STAMP): pyproject.toml $(wildcard setup.py) $(wildcard instaseg/ops/csrc/*.cpp)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0 'setuptools>=68' wheel
	# No build isolation: the C++ ops extension compiles against the torch installed just above.
	$(BIN)/python -m pip install -q --no-build-isolation -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/instaseg demo --out demo_output

test: $(STAMP)
	$(BIN)/ruff check instaseg tests benchmarks
	$(BIN)/ruff format --check instaseg tests benchmarks
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check instaseg tests benchmarks
	$(BIN)/ruff format --check instaseg tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info demo_output
