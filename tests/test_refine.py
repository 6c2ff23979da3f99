"""Explanation.refined (RefineCAM) against pytorch-grad-cam 1.5.7's RefineCAM."""

from __future__ import annotations

import numpy as np
import torch
from conftest import export_bytes, small_cnn
from references import pytorch_grad_cam

import onnx_cam


def test_refined_equals_pytorch_grad_cams_refine_cam():
    pgc = pytorch_grad_cam()
    torch.manual_seed(9)
    model = small_cnn(2, classes=3)
    x = torch.randn(3, 2, 16, 16)
    targets = [2, 0, 1]
    res = onnx_cam.Explainer(export_bytes(model, x)).explain(
        x.numpy(), targets=targets, layers=["/1/Relu_output_0", "/3/Relu_output_0"],
        methods=["gradcam++", "gradcam"])
    classifier = pgc.utils.model_targets.ClassifierOutputTarget
    for method, base in (("gradcam++", pgc.GradCAMPlusPlus), ("gradcam", pgc.GradCAM)):
        ref = pgc.RefineCAM(model, [model[1], model[3]], base_method=base)(
            x, targets=[classifier(t) for t in targets])
        np.testing.assert_allclose(res.refined(method), ref, atol=2e-3)
    one = res.refined("gradcam", layers=["/3/Relu_output_0"])
    np.testing.assert_allclose(one, res.cam("gradcam", "/3/Relu_output_0"), atol=1e-6)
