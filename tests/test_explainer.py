"""The Explainer API: targets, layers, batching, sessions, save / load, heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import export_bytes, small_cnn
from torch import nn

import onnx_cam


def torch_gradcam(model: nn.Sequential, x: torch.Tensor, layer: int, targets) -> np.ndarray:
    """Reference raw Grad-CAM by torch autograd on the module list (head excluded)."""
    body = model[:-1] if isinstance(model[-1], (nn.Softmax, nn.Sigmoid, nn.LogSoftmax)) else model
    acts = body[:layer + 1](x)
    acts.retain_grad()
    logits = body[layer + 1:](acts)
    logits[torch.arange(len(x)), torch.as_tensor(targets)].sum().backward()
    weights = acts.grad.flatten(2).mean(2)
    cam = torch.relu((weights[:, :, None] * acts.flatten(2)).sum(1))
    return cam.reshape(acts.shape[:1] + acts.shape[2:]).detach().numpy()


def test_predicted_class_is_explained_by_default(cnn1d):
    model, x, onnx_bytes = cnn1d
    exp = onnx_cam.Explainer(onnx_bytes)
    res = exp.explain(x.numpy())
    with torch.no_grad():
        logits = model[:-1](x).numpy()
    np.testing.assert_allclose(res.logits, logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(res.predicted, logits.argmax(1))
    np.testing.assert_array_equal(res.targets, res.predicted)
    np.testing.assert_allclose(res.probs, torch.softmax(torch.from_numpy(logits), 1).numpy(),
                               rtol=1e-5, atol=1e-6)
    ref = torch_gradcam(model, x, 3, res.predicted)
    np.testing.assert_allclose(res.raw(), ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())
    assert res.cam().shape == (5, 40)
    assert res.cam().min() >= 0 and res.cam().max() <= 1


def test_explicit_targets_names_and_batching_agree(cnn1d):
    model, x, onnx_bytes = cnn1d
    exp = onnx_cam.Explainer(onnx_bytes, class_names=["a", "b", "c"])
    targets = [2, 0, 1, 1, 0]
    whole = exp.explain(x.numpy(), targets=targets, methods=["gradcam", "hirescam"])
    named = exp.explain(x.numpy(), targets=["c", "a", "b", "b", "a"],
                        methods=["gradcam", "hirescam"], batch_size=2)
    for method in ("gradcam", "hirescam"):
        np.testing.assert_allclose(whole.cam(method), named.cam(method), atol=1e-6)
        np.testing.assert_allclose(whole.raw(method), named.raw(method), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(whole.raw("gradcam"), torch_gradcam(model, x, 3, targets),
                               rtol=1e-4, atol=1e-7)


def test_one_target_for_all_items(cnn1d):
    _, x, onnx_bytes = cnn1d
    res = onnx_cam.Explainer(onnx_bytes).explain(x.numpy(), targets=1)
    np.testing.assert_array_equal(res.targets, [1] * 5)


def test_contrastive_foil_is_target_minus_foil(cnn1d):
    _, x, onnx_bytes = cnn1d
    exp = onnx_cam.Explainer(onnx_bytes)
    layer = exp.layers[0]
    _, target = exp.activations_and_gradients(x.numpy(), targets=2, layers=layer)
    _, foil = exp.activations_and_gradients(x.numpy(), targets=0, layers=layer)
    _, both = exp.activations_and_gradients(x.numpy(), targets=2, foils=0, layers=layer)
    np.testing.assert_allclose(both[layer][1], target[layer][1] - foil[layer][1], atol=1e-6)


def test_layers_are_deepest_first_and_sessions_are_cached(cnn1d):
    _, x, onnx_bytes = cnn1d
    exp = onnx_cam.Explainer(onnx_bytes)
    layers = exp.layers
    assert layers[0] == "/3/Relu_output_0"
    assert layers[-1] == "/0/Conv_output_0"
    res = exp.explain(x.numpy(), layers=layers[:3], methods="hirescam")
    assert res.raw("hirescam", layers[2]).shape == (5, 40)
    assert res.raw("hirescam", layers[0]).shape == (5, 20)
    exp.explain(x.numpy(), layers=layers[:3], methods="gradcam")
    assert len(exp._sessions) == 1


def test_node_names_resolve_to_their_output(cnn1d):
    _, x, onnx_bytes = cnn1d
    exp = onnx_cam.Explainer(onnx_bytes)
    by_node = exp.explain(x.numpy(), layers="/2/Conv")
    by_tensor = exp.explain(x.numpy(), layers="/2/Conv_output_0")
    np.testing.assert_allclose(by_node.cam(layer="/2/Conv"), by_tensor.cam(), atol=1e-7)


@pytest.mark.parametrize("head, probs", [
    (nn.Sigmoid(), torch.sigmoid), (nn.LogSoftmax(dim=1), lambda t: torch.softmax(t, 1)),
    (None, lambda t: torch.softmax(t, 1)),
])
def test_heads_are_found_and_logits_explained(head, probs):
    torch.manual_seed(1)
    model = small_cnn(2, head, classes=4)
    x = torch.randn(3, 2, 12, 10)
    exp = onnx_cam.Explainer(export_bytes(model, x))
    assert exp.head == (type(head).__name__ if head is not None else None)
    res = exp.explain(x.numpy(), targets=[0, 3, 2])
    body = model[:-1] if head is not None else model
    with torch.no_grad():
        logits = body(x)
    np.testing.assert_allclose(res.logits, logits.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.probs, probs(logits).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.raw(), torch_gradcam(model, x, 3, [0, 3, 2]), rtol=1e-4,
                               atol=1e-7)


def test_save_and_load_round_trip(cnn1d, tmp_path):
    _, x, onnx_bytes = cnn1d
    exp = onnx_cam.Explainer(onnx_bytes, class_names=["a", "b", "c"])
    res = exp.explain(x.numpy(), targets=1, foils=2, layers=exp.layers[:2],
                      methods=["gradcam", "hirescam"])
    path = tmp_path / "res.npz"
    res.save(path)
    back = onnx_cam.Explanation.load(path)
    assert back.methods == res.methods and back.layers == res.layers
    assert back.class_names == ["a", "b", "c"]
    np.testing.assert_array_equal(back.foils, res.foils)
    for key in res.cams:
        np.testing.assert_array_equal(back.cams[key], res.cams[key])
        np.testing.assert_array_equal(back.raws[key], res.raws[key])
        np.testing.assert_array_equal(back.score_ranges[key], res.score_ranges[key])
    assert list(tmp_path.iterdir()) == [path]


def test_score_range_restores_the_upsampled_map(cnn1d):
    _, x, onnx_bytes = cnn1d
    res = onnx_cam.Explainer(onnx_bytes).explain(x.numpy(), methods="hirescam")
    raw = torch.from_numpy(res.raw())[:, None]
    upsampled = torch.nn.functional.interpolate(raw, size=40, mode="linear",
                                                align_corners=False)[:, 0].numpy()
    lo, hi = res.score_range()[:, :1], res.score_range()[:, 1:]
    np.testing.assert_allclose(res.cam() * (hi - lo) + lo, upsampled, rtol=1e-5, atol=1e-7)


def test_torch_module_is_exported_on_the_way(cnn1d):
    model, x, _ = cnn1d
    exp = onnx_cam.Explainer(model, example_input=x[:2])
    res = exp.explain(x.numpy(), layers="2", targets=[0, 1, 2, 0, 1])
    assert res.raw().shape == (5, 20)


def test_dynamic_length_model_gets_a_graph_per_length():
    import io
    import warnings
    torch.manual_seed(2)
    model = small_cnn(1, nn.Softmax(dim=1))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 2, 30),), buffer, dynamo=False,
                          do_constant_folding=False, opset_version=17, input_names=["input"],
                          output_names=["output"],
                          dynamic_axes={"input": {0: "N", 2: "T"}, "output": {0: "N"}})
    exp = onnx_cam.Explainer(buffer.getvalue())
    for length in (24, 57):
        x = torch.randn(2, 2, length)
        res = exp.explain(x.numpy(), targets=[1, 2])
        assert res.cam().shape == (2, length)
        np.testing.assert_allclose(res.raw(), torch_gradcam(model, x, 3, [1, 2]), rtol=1e-4,
                                   atol=1e-7)
