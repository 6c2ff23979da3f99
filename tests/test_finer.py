"""FinerCAM's target (onnx_cam.Finer) against pytorch-grad-cam 1.5.7's FinerCAM and against
torch autograd of its FinerWeightedTarget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import export_bytes, small_cnn
from references import pytorch_grad_cam

import onnx_cam
from onnx_cam.targets import Finer


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(8)
    model = small_cnn(2, classes=6)
    x = torch.randn(4, 2, 16, 16)
    return model, x, onnx_cam.Explainer(export_bytes(model, x))


@pytest.mark.parametrize("finer", [Finer(), Finer(alpha=0.6, comparisons=(1, 3), target=2)])
def test_seed_is_the_gradient_of_the_finer_score(setup, finer):
    model, x, _ = setup
    pgc = pytorch_grad_cam()
    logits = model(x).detach().double().requires_grad_(True)
    plan = finer.plan(logits.detach().numpy(), None)
    for i in range(len(x)):
        z = logits.detach().numpy()[i]
        main = int(plan.targets[i])
        nearest = np.argsort(np.abs(z - z[main]), kind="stable")
        target = pgc.utils.model_targets.FinerWeightedTarget(
            main, [int(nearest[c]) for c in finer.comparisons], finer.alpha)
        (grad,) = torch.autograd.grad(target(logits[i]), logits)
        np.testing.assert_allclose(plan.seeds[i], grad[i].numpy(), rtol=1e-5, atol=1e-7)


def test_maps_equal_pytorch_grad_cams_finer_cam(setup):
    model, x, exp = setup
    pgc = pytorch_grad_cam()
    ref = pgc.FinerCAM(model, target_layers=[model[3]])(x, alpha=1.0)
    res = exp.explain(x.numpy(), targets=Finer(), layers="/3/Relu_output_0")
    np.testing.assert_array_equal(res.targets, model(x).argmax(1).numpy())
    np.testing.assert_allclose(res.cam(), ref, atol=1e-3)


def test_finer_refuses_what_it_cannot_do_exactly(setup):
    _, x, exp = setup
    with pytest.raises(onnx_cam.MethodError, match="gradient methods"):
        exp.explain(x.numpy(), targets=Finer(), methods="scorecam")
    with pytest.raises(onnx_cam.MethodError, match="score='logits'"):
        exp.explain(x.numpy(), targets=Finer(), score="probs")
    for method in ("integrated_gradients", "smoothgrad", "shapleycam"):
        with pytest.raises(onnx_cam.MethodError, match="linearised"):
            exp.explain(x.numpy(), targets=Finer(), methods=method)
    with pytest.raises(onnx_cam.TargetError, match="no foils"):
        exp.explain(x.numpy(), targets=Finer(), foils=1)
    with pytest.raises(onnx_cam.TargetError, match="ranks 1..5"):
        exp.explain(x.numpy(), targets=Finer(comparisons=(6,)))
