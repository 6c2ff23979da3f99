"""check_ties: route-deciding comparisons within rounding of a tie, counted per row against
numpy loops over the same tensors (planted ties), and RuntimeOptions(exact_routes=True)."""

from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import export_bytes
from torch import nn

import onnx_cam
from onnx_cam import runtime
from onnx_cam.graph.cam_model import CamOutputs, build_cam_model
from onnx_cam.numerics import NumericsWarning, RowFlag

TOL = 1e-5


def identity_conv(conv: nn.Module) -> nn.Module:
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(conv.weight.shape[0]):
            conv.weight[(c, c) + (0,) * (conv.weight.ndim - 2)] = 1
        conv.bias.zero_()
    return conv


def pool_model(dims: int, pool: nn.Module) -> nn.Sequential:
    """layer = relu(x) exactly (a 1x1 identity conv), then the pool routes the gradient."""
    conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims]
    gap = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}[dims]
    torch.manual_seed(0)
    return nn.Sequential(identity_conv(conv(2, 2, 1)), nn.ReLU(), pool, conv(2, 3, 1), gap(1),
                         nn.Flatten(), nn.Linear(3, 2)).eval()


def window_ties(a: np.ndarray, kernel, stride, pad, dilation) -> np.ndarray:
    """Per row, windows where a second value is within TOL x max|a| of the winner."""
    counts = np.zeros(len(a), int)
    for i, item in enumerate(a):
        margin = TOL * np.abs(item).max()
        padded = np.pad(item, [(0, 0)] + [(p, p) for p in pad], constant_values=-np.inf)
        spatial = item.shape[1:]
        outs = [(s + 2 * p - d * (k - 1) - 1) // st + 1
                for s, p, d, k, st in zip(spatial, pad, dilation, kernel, stride)]
        for c in range(len(item)):
            for pos in itertools.product(*(range(o) for o in outs)):
                taps = [padded[(c, *[o * st + t * d for o, st, t, d in
                                     zip(pos, stride, tap, dilation)])]
                        for tap in itertools.product(*(range(k) for k in kernel))]
                counts[i] += np.sum(np.array(taps) >= max(taps) - margin) >= 2
    return counts


@pytest.mark.parametrize("dims, kernel, stride, pad, dilation", [
    (2, (3, 3), (2, 2), (1, 1), (1, 1)),
    (1, (3,), (2,), (1,), (2,)),
])
def test_max_pool_ties_counted_per_window(dims, kernel, stride, pad, dilation):
    model = pool_model(dims, (nn.MaxPool1d if dims == 1 else nn.MaxPool2d)(
        kernel, stride, pad, dilation))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, *(9,) * dims)).astype(np.float32)
    flat, d = x.reshape(3, -1), dilation[-1]
    flat[0, 3] = flat[0, 3 + d] = 2.5         # a planted tie: two taps of one window
    flat[1, 1] = 3.0
    flat[1, 1 + d] = 3.0 - 1e-6               # within 1e-5 of the row's largest |value|
    exp = onnx_cam.Explainer(export_bytes(model, torch.from_numpy(x)))
    with pytest.warns(NumericsWarning, match="float32 rounding"):
        res = exp.explain(x, targets=0, layers="/1/Relu_output_0", check_ties=True)
    ref = window_ties(np.maximum(x, 0), kernel, stride, pad, dilation)
    cam = build_cam_model(exp.model, ["/1/Relu_output_0"], x.shape[2:],
                          outputs=CamOutputs(tie_tolerance=TOL))
    session = ort.InferenceSession(cam.proto.SerializeToString())
    counts = session.run([cam.near_ties_name], {cam.input_name: x,
                                                cam.seed_name: np.eye(2, dtype=np.float32)[
                                                    [0, 0, 0]]})[0]
    np.testing.assert_array_equal(counts, ref)
    assert ref[0] > 0 and ref[1] > 0
    np.testing.assert_array_equal((res.flags & RowFlag.NEAR_TIE) != 0, ref > 0)


def test_relu_sign_near_zero_is_flagged_and_clean_rows_are_not():
    torch.manual_seed(2)
    first, second = nn.Conv1d(2, 4, 3, padding=1), nn.Conv1d(4, 4, 3, padding=1)
    model = nn.Sequential(first, nn.ReLU(), second, nn.ReLU(), nn.AdaptiveMaxPool1d(1),
                          nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.randn(4, 2, 24)
    with torch.no_grad():
        z = second(torch.relu(first(x)))      # the second ReLU's input
        second.bias[1] -= z[2, 1, 10] - 3e-7  # row 2 gets one pre-activation of 3e-7
        z = second(torch.relu(first(x))).numpy()
    exp = onnx_cam.Explainer(export_bytes(model, x))
    res = exp.explain(x.numpy(), targets=1, layers="/1/Relu_output_0", check_ties=1e-4)
    relu = (np.abs(z) <= 1e-4 * np.abs(z).reshape(4, -1).max(1)[:, None, None])
    pooled = np.maximum(z, 0)
    top = pooled.max(2, keepdims=True)
    pool = ((pooled >= top - 1e-4 * pooled.reshape(4, -1).max(1)[:, None, None]).sum(2) >= 2)
    expected = relu.reshape(4, -1).any(1) | pool.any(1)
    assert expected[2]
    np.testing.assert_array_equal((res.flags & RowFlag.NEAR_TIE) != 0, expected)
    plain = exp.explain(x.numpy(), targets=1, layers="/1/Relu_output_0")
    assert not (plain.flags & RowFlag.NEAR_TIE).any()  # only checked when asked
    np.testing.assert_allclose(res.raw(), plain.raw(), rtol=1e-6, atol=1e-7)


def test_check_ties_rejects_a_bad_tolerance(cnn1d):
    _, x, onnx_bytes = cnn1d
    with pytest.raises(onnx_cam.InputError, match="check_ties"):
        onnx_cam.Explainer(onnx_bytes).explain(x.numpy(), check_ties=2.0)


def test_exact_routes_keeps_rounding_fusions_out(cnn1d, monkeypatch):
    _, x, onnx_bytes = cnn1d
    seen = []
    original = ort.InferenceSession

    def spy(*args, **kwargs):
        seen.append(kwargs.get("disabled_optimizers"))
        return original(*args, **kwargs)

    monkeypatch.setattr(runtime.ort, "InferenceSession", spy)
    exact = onnx_cam.Explainer(onnx_bytes, runtime=onnx_cam.RuntimeOptions(exact_routes=True))
    res = exact.explain(x.numpy(), targets=0)
    assert seen and all(s == list(runtime.ROUNDING_FUSIONS) for s in seen)
    default = onnx_cam.Explainer(onnx_bytes).explain(x.numpy(), targets=0)
    np.testing.assert_allclose(res.cam(), default.cam(), atol=1e-5)
