# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# setuptools notes on every editable install of a package not laid out as plain src/ (ours maps
# backends/ into it) that a folder named like the package could shadow it; none is at the root.
QUIET_EDITABLE := PYTHONWARNINGS="ignore:Editable installation:UserWarning"

.PHONY: demo test lint mutate clean gpu-wheels gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The library and numba (the fast extra: NumPy's compiled time loop), for the demo.
$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(QUIET_EDITABLE) $(BIN)/python -m pip install -q -e '.[fast]'
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

# Plant one-line bugs in the math, one at a time, and report which test catches each.
mutate: $(VENV)/.installed-test
	$(BIN)/python scripts/mutate.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .hypothesis .ruff_cache .mutate-backup

# The GPU proof (see scripts/gpu-check): fetch the wheels the GPU machine lacks, then run there.
# Dask distributed and its dependencies let the GPU machine run xplstm.distributed with CuPy.
gpu-wheels:
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl array-api-compat==1.16.0 array-api-strict==2.6.1 threadpoolctl==3.8.0 \
	  dask==2026.8.0 distributed==2026.8.0 cloudpickle==3.1.3 toolz==1.2.0 partd==1.4.2 \
	  locket==1.0.0 fsspec==2026.9.0 click==8.5.1 pyyaml==6.0.4 msgpack==1.2.4 psutil==7.2.2 \
	  tornado==6.6.1 tblib==3.2.2 zict==3.0.0 sortedcontainers==2.4.0 jinja2==3.1.6 \
	  markupsafe==3.0.4

gpu-check:
	scripts/gpu-check
