"""Reference libraries that do not import beside torch 2.13 as installed.

pytorch-grad-cam's package imports torchvision, ttach and scikit-learn. PyPI's torchvision is
built against another torch and registers fake kernels for two ops of its own compiled
library (`torchvision::nms`, `torchvision::qnms`) at import; with their schemas defined first
it imports and its pure-Python parts work. The Makefile installs these references into
`.venv/refs` (`pip install --target`), outside site-packages, so nothing else in the venv
(torch.onnx's dynamo exporter looks for torchvision) ever sees them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REFS = Path(sys.prefix) / "refs"
_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


def pytorch_grad_cam():
    """The pytorch_grad_cam package (grad-cam 1.5.7), or skip the calling test saying why."""
    return _with_torchvision("pytorch_grad_cam")


def _with_torchvision(package: str):
    """Import `package` with .venv/refs on the path and torchvision's op schemas defined."""
    if not (REFS / "torchvision").is_dir():
        pytest.skip(f"torchvision (for {package}) is not in {REFS}: run `make install`")
    import torch

    for op in ("nms", "qnms"):
        try:
            torch.library.define(f"torchvision::{op}", _SCHEMA)
        except RuntimeError:
            pass  # defined by an earlier call in this process
    if str(REFS) not in sys.path:
        sys.path.append(str(REFS))
    return pytest.importorskip(package)


def timm():
    """timm 1.0.31 (its models built with random weights; nothing is downloaded)."""
    return _with_torchvision("timm")


def quantus():
    """Quantus 0.6.0, the metrics reference."""
    return _with_torchvision("quantus")


def torchcam():
    """TorchCAM 0.5.0's methods module (installed into .venv/refs beside the others)."""
    if not (REFS / "torchcam").is_dir():
        pytest.skip(f"TorchCAM is not in {REFS}: run `make install`")
    if str(REFS) not in sys.path:
        sys.path.append(str(REFS))
    return pytest.importorskip("torchcam.methods")
