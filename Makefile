# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# setuptools notes on every editable install of a package not laid out as plain src/ (ours maps
# backends/ into it) that a folder named like the package could shadow it; none is at the root.
QUIET_EDITABLE := PYTHONWARNINGS="ignore:Editable installation:UserWarning"

.PHONY: demo test lint clean gpu-wheels gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The library alone (numpy, array-api-compat, tqdm, matplotlib, threadpoolctl): enough for the demo.
$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(QUIET_EDITABLE) $(BIN)/python -m pip install -q -e .
	touch $@

# The library and everything the tests compare against (torch==2.13.0 CPU, jax, dask, ...).
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(QUIET_EDITABLE) $(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed-base

demo: $(VENV)/.installed-base
	$(BIN)/xplstm train --task adding --seq-len 100

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .hypothesis .ruff_cache

# The GPU proof (see scripts/gpu-check): fetch the wheels the GPU machine lacks, then run there.
gpu-wheels:
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl array-api-compat==1.16.0 array-api-strict==2.6.1 threadpoolctl==3.8.0

gpu-check:
	scripts/gpu-check
