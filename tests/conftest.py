"""Shared fixtures: small torch models exported to ONNX bytes, made fresh in each session."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn


def export_bytes(model: nn.Module, x: torch.Tensor, opset: int = 17,
                 dynamic_axes: dict | None = None) -> bytes:
    """A plain legacy-exporter ONNX export with a dynamic batch axis (or `dynamic_axes`)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), buffer, dynamo=False, do_constant_folding=False,
                          opset_version=opset, input_names=["input"], output_names=["output"],
                          dynamic_axes=dynamic_axes or {"input": {0: "N"}, "output": {0: "N"}})
    return buffer.getvalue()


def small_cnn(dims: int = 1, head: nn.Module | None = None, classes: int = 3) -> nn.Sequential:
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[dims]
    layers = [conv(2, 6, 3, padding=1), nn.ReLU(), conv(6, 8, 3, stride=2, padding=1), nn.ReLU(),
              pool(1), nn.Flatten(), nn.Linear(8, classes)]
    if head is not None:
        layers.append(head)
    return nn.Sequential(*layers).eval()


@pytest.fixture(scope="session")
def cnn1d():
    torch.manual_seed(0)
    model = small_cnn(1, nn.Softmax(dim=1))
    x = torch.randn(5, 2, 40)
    return model, x, export_bytes(model, x)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def peak_in_subprocess(imports: str, call: str, error: str, budget: str) -> dict:
    """Run `call` in a fresh process under ONNX_CAM_MAX_MEMORY=`budget`: {"added": the peak
    resident memory it added (Linux VmHWM, reset just before), "message": "Type: text" of the
    `error` it raised (an exception class `imports`, one line, brings in), or None}."""
    code = textwrap.dedent(f"""
        import json
        {imports}
        def status(key):
            return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
                        if line.startswith(key))
        open("/proc/self/clear_refs", "w").write("5")
        before = status("VmRSS")
        try:
            {call}
            message = None
        except {error} as exc:
            message = f"{{type(exc).__name__}}: {{exc}}"
        print(json.dumps({{"added": status("VmHWM") - before, "message": message}}))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[1],
                          env={**os.environ, "ONNX_CAM_MAX_MEMORY": budget})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def pytest_configure(config):
    # pytest-xdist's controller unpickles the warnings its workers report, and a reference
    # library's warning class (scikit-learn's, raised under Quantus) lives in .venv/refs. The
    # controller runs no test, so the reference path is safe on its sys.path (workers add it
    # only when a test asks for a reference: see references.py).
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        from references import REFS
        if str(REFS) not in sys.path:
            sys.path.append(str(REFS))
