"""SESS against pytorch-grad-cam 1.5.7's SESS on 2D (its own code, same weights), and its
steps written out with torch on a 1D signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import export_bytes, small_cnn
from references import pytorch_grad_cam
from scipy import ndimage

import onnx_cam
from onnx_cam.methods import SESS


def dynamic_export(model, x) -> bytes:
    """An export whose spatial axes are free too: SESS runs the model on patches."""
    axes = {0: "N", **{a: f"s{a}" for a in range(2, x.ndim)}}
    return export_bytes(model, x, dynamic_axes={"input": axes, "output": {0: "N"}})

TARGETS = [1, 2]


@pytest.mark.parametrize("options", [
    {"num_scales": 3},
    {"num_scales": 2, "step": 6, "pool": "max", "smooth": False, "use_softmax_scores": False},
])
def test_equals_pytorch_grad_cams_sess(options):
    pgc = pytorch_grad_cam()
    torch.manual_seed(50)
    model = small_cnn(2, classes=3)
    x = torch.randn(2, 2, 16, 20)
    theirs = {("step_size" if k == "step" else k): v for k, v in options.items()}
    targets = [pgc.utils.model_targets.ClassifierOutputTarget(t) for t in TARGETS]
    ref = pgc.SESS(model, [model[3]], **theirs)(x, targets=targets)
    res = onnx_cam.Explainer(dynamic_export(model, x)).explain(
        x.numpy(), targets=TARGETS, layers="/3/Relu_output_0", methods=SESS(**options))
    np.testing.assert_allclose(res.cam(), ref, atol=2e-3)


def test_signal_steps_written_out():
    torch.manual_seed(51)
    model = small_cnn(1, classes=3)
    x = torch.randn(2, 2, 30)
    exp = onnx_cam.Explainer(dynamic_export(model, x))
    res = exp.explain(x.numpy(), targets=TARGETS, layers="/3/Relu_output_0",
                      methods=SESS(window=12, step=8, num_scales=2, scale_step_ratio=0.5))

    def cam(patch, target):  # Grad-CAM at model[3], resized, min-max
        acts = model[:4](patch).detach().requires_grad_(True)
        model[4:](acts)[:, target].sum().backward()
        raw = F.relu((acts.grad.mean(2, keepdim=True) * acts).sum(1, keepdim=True))
        up = F.interpolate(raw, size=patch.shape[2:], mode="linear")[:, 0]
        return ((up - up.amin(1, keepdim=True)) / (up.amax(1, keepdim=True)
                                                   - up.amin(1, keepdim=True))).detach()

    for i, target in enumerate(TARGETS):
        total, counts = torch.zeros(30), torch.zeros(30)
        pieces = []
        for length in (12, 18):  # scales: window 12, then 12 + round(0.5 * 12)
            scaled = F.interpolate(x[i:i + 1], size=length, mode="linear")
            for s in ([0] if length == 12 else [0, 6]):  # 8 + 12 >= 18: moved back to 6
                pieces.append((length, s, scaled[..., s:s + 12]))
        with torch.no_grad():
            scores = torch.stack([torch.softmax(model(p), 1)[0, target] for *_, p in pieces])
        weights = scores / scores.max()
        for (length, s, patch), w in zip(pieces, weights):
            full = torch.zeros(1, 1, length)
            full[..., s:s + 12] = cam(patch, target) * w
            pasted = F.interpolate(full, size=30, mode="linear")[0, 0]
            above = pasted > 0
            total[above] += pasted[above]
            counts += above
        fused = torch.where(counts > 0, total / counts.clamp(min=1), 0).numpy()
        fused = ndimage.gaussian_filter(fused, 5.0, truncate=1.0, mode="mirror")
        np.testing.assert_allclose(res.raw("sess")[i], fused, rtol=1e-4, atol=1e-5)


def test_fixed_size_models_are_refused():
    torch.manual_seed(52)
    model = small_cnn(2, classes=3)
    x = torch.randn(1, 2, 16, 20)
    exp = onnx_cam.Explainer(export_bytes(model, x))
    with pytest.raises(onnx_cam.MethodError, match="dynamic spatial axes"):
        exp.explain(x.numpy(), methods="sess")
