"""Smooth Grad-CAM++ against its paper's formula written in torch on autograd gradients of
the same noisy inputs (1D / 2D / 3D). TorchCAM's SmoothGradCAMpp computes another formula
(see the method's docstring), so it is no reference here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import export_bytes, small_cnn

import onnx_cam
from onnx_cam.methods import SmoothGradCAMPlusPlus

TARGETS = [2, 0, 1]
SHAPES = {1: (3, 2, 30), 2: (3, 2, 12, 10), 3: (3, 2, 6, 8, 5)}
LAYER = "/1/Relu_output_0"


def setup(dims):
    torch.manual_seed(30 + dims)
    model = small_cnn(dims, classes=3)
    x = torch.randn(*SHAPES[dims])
    return model, x, onnx_cam.Explainer(export_bytes(model, x))


def gradient(model, x):
    acts = model[:2](x).detach().requires_grad_(True)
    model[2:](acts)[torch.arange(len(x)), torch.tensor(TARGETS)].sum().backward()
    return acts.detach(), acts.grad


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_matches_the_papers_formula(dims):
    model, x, exp = setup(dims)
    method = SmoothGradCAMPlusPlus(samples=3, std=0.4, seed=5)
    rng = np.random.default_rng(5)
    grads = [gradient(model, x + torch.from_numpy(
        rng.normal(0, 0.4, x.shape).astype(np.float32)))[1].double() for _ in range(3)]
    a = gradient(model, x)[0].double()
    mean, square, cube = (sum(g ** k for g in grads) / 3 for k in (1, 2, 3))
    spatial = tuple(range(2, a.ndim))
    alpha = square / (2 * square + a.sum(spatial, keepdim=True) * cube)
    alpha = torch.where(square != 0, alpha, torch.zeros_like(alpha))
    w = (alpha * F.relu(mean)).sum(spatial, keepdim=True)
    ref = F.relu((w * a).sum(1)).numpy()
    res = exp.explain(x.numpy(), targets=TARGETS, layers=LAYER, methods=method)
    np.testing.assert_allclose(res.raw(), ref, rtol=1e-4, atol=1e-5 * ref.max())


def test_token_models_are_refused():
    vocab = 11
    model = torch.nn.Sequential(torch.nn.Embedding(vocab, 4), Transpose(),
                                torch.nn.Conv1d(4, 3, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten()).eval()
    ids = torch.randint(0, vocab, (2, 12))
    exp = onnx_cam.Explainer(model, example_input=ids)
    with pytest.raises(onnx_cam.MethodError, match="token ids"):
        exp.explain(ids.numpy(), methods="smoothgradcam++")


class Transpose(torch.nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)
