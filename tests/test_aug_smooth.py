"""aug_smooth against pytorch-grad-cam 1.5.7's aug_smooth=True (ttach's flips and scales)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import export_bytes, small_cnn
from references import pytorch_grad_cam

import onnx_cam

TARGETS = [1, 0, 2]


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "scorecam"])
def test_equals_pytorch_grad_cams_aug_smooth(method):
    pgc = pytorch_grad_cam()
    torch.manual_seed(40)
    model = small_cnn(2, classes=3)
    x = torch.randn(3, 2, 16, 12)
    cls = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus,
           "scorecam": pgc.ScoreCAM}[method]
    targets = [pgc.utils.model_targets.ClassifierOutputTarget(t) for t in TARGETS]
    ref = cls(model, target_layers=[model[1]])(x, targets=targets, aug_smooth=True)
    exp = onnx_cam.Explainer(export_bytes(model, x))
    res = exp.explain(x.numpy(), targets=TARGETS, layers="/1/Relu_output_0", methods=method,
                      aug_smooth=True)
    np.testing.assert_allclose(res.cam(), ref, atol=1e-3)
    plain = exp.explain(x.numpy(), targets=TARGETS, layers="/1/Relu_output_0", methods=method)
    np.testing.assert_array_equal(res.raw(), plain.raw())
    assert np.abs(res.cam() - plain.cam()).max() > 1e-2  # the augmentations do change it


def test_aug_smooth_is_for_images(cnn1d):
    _, x, onnx_bytes = cnn1d
    with pytest.raises(onnx_cam.MethodError, match="images"):
        onnx_cam.Explainer(onnx_bytes).explain(x.numpy(), aug_smooth=True)
