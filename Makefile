# The two commands a new user needs: `make run` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
JOB ?= jobs/smoke.yaml

.PHONY: run test gpu-check mutation clean

# The CPU build of torch goes in first: a bare `torch` requirement would pull a multi-GB CUDA
# build. Elsewhere, PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu picks the CPU wheel;
# on a GPU machine, install your CUDA torch into .venv before `make`, and it is kept.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test]" -c constraints.txt
	touch $@

run: $(VENV)/.installed
	$(PY) -m fuyu_ray.grid --job $(JOB)

test: $(VENV)/.installed
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m pytest -q -ra

# Mutation sweep of the core modules against their fast tests (tests/mutation.py says how), niced for a
# shared machine; MODULE=store (or several, space-separated) sweeps only those. Not part of `make test`:
# it takes about an hour on 2 cores.
MODULE ?=
mutation: $(VENV)/.installed
	$(PY) -m pip install --quiet "mutmut==3.8.1"
	nice -n 19 $(PY) tests/mutation.py $(MODULE)

# Runs without Ray, Polars or datasets: for a bare single-GPU machine (see README).
gpu-check:
	$(PYTHON) -m fuyu_ray.gpu_check --out results/gpu-check

clean:
	rm -rf $(VENV) results/*/ mutants/
