# Set-up on a fresh machine is two commands: `make demo` then `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test test-fast lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[torch,tf,audit,test]"
	touch $@

demo: install
	$(PY) scripts/demo.py --out demo_out

test: install
	$(PY) -m ruff check onnx_cam kernels converters tests benchmarks scripts
	$(PY) -m pytest -q -n 2

test-fast: install
	$(PY) -m pytest -q -n 2 -m "not slow"

bench: install
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/bench_kernels.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache .hypothesis
