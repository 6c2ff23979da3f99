# Set-up on a fresh machine is two commands: `make demo` then `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test test-fast lint bench clean

install: $(VENV)/.installed

# The last pip line adds reference implementations the tests compare against, without their
# requirements (those would pull torchvision, a second torch and the full tensorflow wheel):
# pytorch-grad-cam's metrics and SignalGrad-CAM 2.2.0, for tests/test_metrics_gradcam.py and
# tests/test_compat*.py, Captum 0.9.0 for tests/test_perturbation.py and
# tests/test_attributions.py, pytorch-grad-cam's FullGrad (with ttach, which its base class
# imports) for tests/test_attributions.py, and onnxconverter-common's float16 converter for
# tests/test_precision.py (each skips, saying why, when its package is absent). The next line
# puts what pytorch-grad-cam's own package imports (torchvision, ttach, scikit-learn),
# TorchCAM 0.5.0, timm 1.0.31 (models built with random weights) and Quantus 0.6.0 with what
# it imports (scikit-image, pandas, cachetools), in .venv/refs, outside site-packages, where only tests/references.py looks
# (see there why).
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[torch,tf,audit,test]"
	$(PY) -m pip install -q --no-deps "grad-cam==1.5.7" "signal-grad-cam==2.2.0" \
		"opencv-python-headless==5.0.0.93" "imageio==2.38.1" "captum==0.9.0" "ttach==0.0.3" \
		"onnxconverter-common==1.16.0"
	$(PY) -m pip install -q --no-deps --target $(VENV)/refs "torchvision==0.29.1" \
		"ttach==0.0.3" "scikit-learn==1.9.1" "joblib==1.6.0" "threadpoolctl==3.8.0" \
		"narwhals==2.29.0" "torchcam==0.5.0" "timm==1.0.31" "quantus==0.6.0" \
		"scikit-image==0.26.0" "lazy-loader==0.6" "tifffile==2026.3.3" "cachetools==8.0.2" \
		"pandas==3.1.1" "pytz==2026.6" "tzdata==2026.6"
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
