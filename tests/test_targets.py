"""Targets, foils and score choices, against torch autograd on the same model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import export_bytes, small_cnn
from torch import nn

import onnx_cam

LAYER = "/3/Relu_output_0"


def torch_grad(model, x, score_fn):
    """d score_fn(logits) / d activations of small_cnn's second ReLU, per row."""
    body = model[:-1] if isinstance(model[-1], (nn.Softmax, nn.Sigmoid)) else model
    acts = body[:4](x).detach().requires_grad_(True)
    score_fn(body[4:](acts)).sum().backward()
    return acts.grad.numpy()


@pytest.fixture(scope="module")
def softmax_model():
    torch.manual_seed(5)
    model = small_cnn(1, nn.Softmax(dim=1), classes=4)
    x = torch.randn(3, 2, 24)
    return model, x, onnx_cam.Explainer(export_bytes(model, x), class_names=list("abcd"))


def test_several_targets_per_item_become_rows(softmax_model):
    model, x, exp = softmax_model
    targets = [[0, 3], "b", [2, "a", 1]]
    logits, grads = exp.activations_and_gradients(x.numpy(), targets=targets, layers=LAYER)
    items, flat = [0, 0, 1, 2, 2, 2], [0, 3, 1, 2, 0, 1]
    ref = torch_grad(model, x[items], lambda z: z[torch.arange(6), torch.tensor(flat)])
    np.testing.assert_allclose(grads[LAYER][1], ref, rtol=1e-4, atol=1e-7)
    res = exp.explain(x.numpy(), targets=targets, layers=LAYER)
    np.testing.assert_array_equal(res.items, items)
    np.testing.assert_array_equal(res.targets, flat)
    assert res.cam().shape == (6, 24)


def test_top_k_and_all(softmax_model):
    model, x, exp = softmax_model
    with torch.no_grad():
        logits = model[:-1](x).numpy()
    res = exp.explain(x.numpy(), targets="top2", layers=LAYER)
    order = np.argsort(-logits, axis=1)[:, :2].reshape(-1)
    np.testing.assert_array_equal(res.targets, order)
    np.testing.assert_array_equal(res.items, [0, 0, 1, 1, 2, 2])
    everything = exp.explain(x.numpy(), targets="all", layers=LAYER)
    np.testing.assert_array_equal(everything.targets, np.tile(np.arange(4), 3))


def test_several_foils_each_give_a_contrastive_map(softmax_model):
    model, x, exp = softmax_model
    _, grads = exp.activations_and_gradients(x.numpy(), targets=1, foils=[[0, 2], 3, [0]],
                                             layers=LAYER)
    items, foils = [0, 0, 1, 2], [0, 2, 3, 0]
    ref = torch_grad(model, x[items], lambda z: z[:, 1] - z[torch.arange(4), torch.tensor(foils)])
    np.testing.assert_allclose(grads[LAYER][1], ref, rtol=1e-4, atol=1e-7)


def test_foils_against_the_predicted_class(softmax_model):
    model, x, exp = softmax_model
    res = exp.explain(x.numpy(), foils="d", layers=LAYER)
    np.testing.assert_array_equal(res.targets, res.predicted)
    np.testing.assert_array_equal(res.foils, [3, 3, 3])


@pytest.mark.parametrize("score, fn", [
    ("log_probs", lambda z, t: torch.log_softmax(z, 1)[torch.arange(len(z)), t]),
    ("probs", lambda z, t: torch.softmax(z, 1)[torch.arange(len(z)), t]),
])
def test_score_choice_softmax_head(softmax_model, score, fn):
    model, x, exp = softmax_model
    t = torch.tensor([2, 0, 3])
    _, grads = exp.activations_and_gradients(x.numpy(), targets=t.tolist(), layers=LAYER,
                                             score=score)
    ref = torch_grad(model, x, lambda z: fn(z, t))
    np.testing.assert_allclose(grads[LAYER][1], ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())


@pytest.mark.parametrize("score, fn", [
    ("logits", lambda z: z[:, 0]),
    ("log_probs", lambda z: torch.nn.functional.logsigmoid(z[:, 0])),
    ("probs", lambda z: torch.sigmoid(z[:, 0])),
])
def test_score_choice_sigmoid_head(score, fn):
    torch.manual_seed(6)
    model = small_cnn(1, nn.Sigmoid(), classes=1)
    x = torch.randn(3, 2, 24)
    exp = onnx_cam.Explainer(export_bytes(model, x))
    _, grads = exp.activations_and_gradients(x.numpy(), layers=LAYER, score=score)
    ref = torch_grad(model, x, fn)
    np.testing.assert_allclose(grads[LAYER][1], ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())


def test_regression_with_a_single_output_vector():
    torch.manual_seed(7)

    class Regressor(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = small_cnn(2, classes=1)

        def forward(self, x):
            return self.net(x)[:, 0]          # (N,)

    model = Regressor().eval()
    x = torch.randn(3, 2, 10, 12)
    exp = onnx_cam.Explainer(model, example_input=x)
    assert exp.head is None and exp.num_classes == 1
    res = exp.explain(x.numpy(), layers="net.3")
    acts = model.net[:4](x).detach().requires_grad_(True)
    model.net[4:](acts)[:, 0].sum().backward()
    weights = acts.grad.mean(dim=(2, 3), keepdim=True)
    ref = torch.relu((weights * acts).sum(1)).detach().numpy()
    np.testing.assert_allclose(res.raw(), ref, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(res.logits[:, 0], model(x).detach().numpy(), rtol=1e-5,
                               atol=1e-6)


def test_class_names_travel_with_the_exported_model(tmp_path):
    torch.manual_seed(8)
    model = small_cnn(1, nn.Softmax(dim=1), classes=3)
    x = torch.randn(2, 2, 16)
    exp = onnx_cam.Explainer(model, example_input=x, class_names=["n", "af", "other"])
    exp.save_model(tmp_path / "m.onnx")
    again = onnx_cam.Explainer(tmp_path / "m.onnx")
    assert again.class_names == ["n", "af", "other"]
    res = again.explain(x.numpy(), targets=["af", "other"])
    np.testing.assert_array_equal(res.targets, [1, 2])
