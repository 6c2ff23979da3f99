"""Deep Feature Factorization (Explainer.factorize) against pytorch-grad-cam 1.5.7's
DeepFeatureFactorization on 2D and scikit-learn's NMF on 1D / 3D activations from torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import export_bytes, small_cnn
from references import pytorch_grad_cam

import onnx_cam

SHAPES = {1: (4, 2, 40), 2: (4, 2, 16, 16), 3: (3, 2, 8, 8, 8)}


def setup(dims):
    torch.manual_seed(10 + dims)
    model = small_cnn(dims, classes=3)
    x = torch.randn(*SHAPES[dims])
    return model, x, onnx_cam.Explainer(export_bytes(model, x))


def test_equals_pytorch_grad_cams_deep_feature_factorization():
    pgc = pytorch_grad_cam()
    model, x, exp = setup(2)
    head = torch.nn.Sequential(model[6])  # the Linear after global pooling, as in its examples
    dff = pgc.DeepFeatureFactorization(model, model[3], computation_on_concepts=head)
    vectors, _, scores = dff(x, n_components=4)
    _, weights = pgc.feature_factorization.deep_feature_factorization.dff(
        model[:4](x).detach().numpy(), n_components=4)
    ours = exp.factorize(x.numpy(), "/3/Relu_output_0", components=4)
    np.testing.assert_allclose(ours.vectors, vectors, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(ours.raw, weights, rtol=1e-3, atol=1e-4 * weights.max())
    np.testing.assert_allclose(ours.scores, scores, rtol=1e-3, atol=1e-4)
    # pytorch-grad-cam scales each map to [0, 1] before resizing it; onnx-cam resizes first,
    # as for every map it draws, so the resized map spans [0, 1] exactly
    np.testing.assert_allclose(ours.maps, scaled(weights, x.shape[2:], "bilinear"), atol=1e-4)


def scaled(weights: np.ndarray, size, mode: str) -> np.ndarray:
    """Maps resized (half-pixel centres), then min-max scaled per map."""
    up = F.interpolate(torch.from_numpy(weights), size=size, mode=mode).numpy()
    flat = up.reshape(*up.shape[:2], -1)
    lo, hi = flat.min(2)[..., None], flat.max(2)[..., None]
    return ((flat - lo) / (hi - lo)).reshape(up.shape)


@pytest.mark.parametrize("dims", [1, 3])
def test_factorizes_signals_and_volumes_like_scikit_learn(dims):
    pytorch_grad_cam()  # puts scikit-learn on the path
    from sklearn.decomposition import NMF

    model, x, exp = setup(dims)
    acts = model[:4](x).detach().numpy()
    matrix = np.moveaxis(acts, 1, 0).reshape(acts.shape[1], -1)
    shifted = matrix - matrix.min(1, keepdims=True)
    nmf = NMF(n_components=3, init="random", random_state=0)
    basis = nmf.fit_transform(shifted)
    weights = nmf.components_.reshape(3, len(x), *acts.shape[2:]).swapaxes(0, 1)
    ours = exp.factorize(x.numpy(), "/3/Relu_output_0", components=3, scores=False)
    np.testing.assert_allclose(ours.vectors, basis + matrix.min(1, keepdims=True), rtol=1e-3,
                               atol=1e-4)
    np.testing.assert_allclose(ours.raw, weights, rtol=1e-3, atol=1e-4 * weights.max())
    mode = {1: "linear", 3: "trilinear"}[dims]
    np.testing.assert_allclose(ours.maps, scaled(weights, x.shape[2:], mode), atol=1e-4)
    assert ours.scores is None


def test_concept_scores_are_refused_when_the_head_reads_the_input():
    class Skip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(2, 4, 3, padding=1)
            self.fc = torch.nn.Linear(6, 2)

        def forward(self, x):
            pooled = torch.cat([torch.relu(self.conv(x)).mean(2), x.mean(2)], 1)
            return self.fc(pooled)

    x = torch.randn(3, 2, 16)
    exp = onnx_cam.Explainer(Skip().eval(), example_input=x)
    with pytest.raises(onnx_cam.UnsupportedModelError, match="skip connection"):
        exp.factorize(x.numpy(), components=2)
    concepts = exp.factorize(x.numpy(), components=2, scores=False)
    assert concepts.maps.shape == (3, 2, 16) and concepts.vectors.shape == (4, 2)
