"""FEM, KPCA-CAM, SegEigenCAM and RandomCAM against pytorch-grad-cam 1.5.7's own code, run on
the activations and gradients torch autograd gives at the same layer (1D, 2D, 3D)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import export_bytes, small_cnn
from references import pytorch_grad_cam
from torch import nn

import onnx_cam
from onnx_cam.methods import KPCACAM, RandomCAM

TARGETS = [0, 2, 1]
SHAPES = {1: (3, 2, 30), 2: (3, 2, 12, 10), 3: (3, 2, 6, 8, 5)}
LAYERS = {1: "/1/Relu_output_0", 3: "/3/Relu_output_0"}


@pytest.fixture(scope="module")
def pgc():
    return pytorch_grad_cam()


def autograd_at(model, x, index):
    """Activations and d(target logit)/d(activations) of model[index] (before the softmax)."""
    body = model[:-1]
    acts = body[:index + 1](x).detach().requires_grad_(True)
    body[index + 1:](acts)[torch.arange(len(x)), torch.tensor(TARGETS)].sum().backward()
    return acts.detach().numpy(), acts.grad.numpy()


@pytest.fixture(scope="module", params=[1, 2, 3], ids=["1d", "2d", "3d"])
def setup(request):
    torch.manual_seed(5)
    model = small_cnn(request.param, nn.Softmax(dim=1), classes=3)
    x = torch.randn(*SHAPES[request.param])
    return onnx_cam.Explainer(export_bytes(model, x)), model, x


def oriented(projection, a):
    """A principal-component map signed to correlate positively with the centred channel sum
    (onnx-cam's orientation; pytorch-grad-cam keeps its solver's sign)."""
    out = []
    for p, item in zip(projection, a):
        flat = item.reshape(len(item), -1).T
        centred_sum = (flat - flat.mean(0)).sum(1)
        out.append(-p if p.reshape(-1) @ centred_sum < 0 else p)
    return np.stack(out)


@pytest.mark.parametrize("index", [1, 3])
@pytest.mark.parametrize("method", ["fem", "kpcacam", "segeigencam"])
def test_matches_pytorch_grad_cam(setup, pgc, method, index):
    exp, model, x = setup
    a, g = autograd_at(model, x, index)
    cls = {"fem": pgc.FEM, "kpcacam": pgc.KPCA_CAM, "segeigencam": pgc.SegEigenCAM}[method]
    cam = cls(model, target_layers=[model[index]])
    if method == "fem" and a.ndim == 3:  # its FEM takes 2D / 3D maps: a signal as (T, 1)
        ref = cam.get_cam_image(None, None, None, a[..., None], None, False)[..., 0]
    else:
        ref = cam.get_cam_image(None, None, None, a, g, False)
    if method == "kpcacam":
        ref = oriented(ref, a)
    ref = np.maximum(ref, 0)
    res = exp.explain(x.numpy(), targets=TARGETS, layers=LAYERS[index], methods=method)
    np.testing.assert_allclose(res.raw(), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_kpca_on_many_positions_and_other_kernels(pgc):
    """Past 512 positions the top eigenpair comes from Lanczos iteration (scikit-learn: ARPACK)."""
    torch.manual_seed(6)
    model = small_cnn(1, nn.Softmax(dim=1), classes=3)
    x = torch.randn(3, 2, 1300)
    exp = onnx_cam.Explainer(export_bytes(model, x))
    a, _ = autograd_at(model, x, 1)
    for kernel in ("sigmoid", "rbf"):
        ref = pgc.KPCA_CAM(model, [model[1]], kernel=kernel).get_cam_image(
            None, None, None, a, None, False)
        ref = np.maximum(oriented(ref, a), 0)
        res = exp.explain(x.numpy(), targets=TARGETS, layers=LAYERS[1],
                          methods=KPCACAM(kernel=kernel))
        np.testing.assert_allclose(res.raw(), ref, rtol=1e-3, atol=1e-4 * ref.max())


def test_fem_end_to_end_equals_pytorch_grad_cam_maps(pgc):
    torch.manual_seed(7)
    model = small_cnn(2, classes=3)
    x = torch.randn(3, 2, 16, 16)
    res = onnx_cam.Explainer(export_bytes(model, x)).explain(
        x.numpy(), targets=TARGETS, layers=LAYERS[3], methods="fem")
    targets = [pgc.utils.model_targets.ClassifierOutputTarget(t) for t in TARGETS]
    ref = pgc.FEM(model, target_layers=[model[3]])(x, targets=targets)
    np.testing.assert_allclose(res.cam(), ref, atol=1e-3)


def test_random_cam_is_seeded_weights_over_channels(setup):
    exp, model, x = setup
    a, _ = autograd_at(model, x, 3)
    res = exp.explain(x.numpy(), targets=TARGETS, layers=LAYERS[3],
                      methods=RandomCAM(seed=11))
    w = np.random.default_rng(11).uniform(-1, 1, a.shape[:2])
    ref = np.maximum((w.reshape(w.shape + (1,) * (a.ndim - 2)) * a).sum(1), 0)
    np.testing.assert_allclose(res.raw(), ref, rtol=1e-4, atol=1e-6)
    again = exp.explain(x.numpy(), targets=TARGETS, layers=LAYERS[3], methods="randomcam")
    assert not np.allclose(again.raw(), res.raw())  # another seed, other maps
