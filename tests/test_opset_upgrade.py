"""Old models with Upsample / Resize-10 compute the same after the upgrade to opset 17.

The reference is ONNX Runtime running the original (opset 7 / 9 / 10) model; onnx's version
converter alone changes linear resizes by up to a quarter of the input's range.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ort = pytest.importorskip("onnxruntime")

import onnx_cam  # noqa: E402
from onnx_cam.errors import UnsupportedModelError  # noqa: E402


def _legacy_model(opset: int, op: str, mode: str, scales: list[float]) -> onnx.ModelProto:
    """input (N, 2, 5, 6) -> Conv -> Relu -> op -> Conv -> GlobalAveragePool -> Gemm."""
    rng = np.random.default_rng(opset)
    inits = {"w1": rng.normal(0, 0.5, (3, 2, 3, 3)), "w2": rng.normal(0, 0.5, (4, 3, 3, 3)),
             "fw": rng.normal(0, 0.5, (3, 4)), "fb": rng.normal(0, 0.1, 3),
             "scales": np.array(scales), "shape": np.array([0, -1])}
    inits = [numpy_helper.from_array(v.astype(np.int64 if k == "shape" else np.float32), k)
             for k, v in inits.items()]
    resize = (helper.make_node(op, ["relu"], ["up"], mode=mode, scales=[float(s) for s in scales])
              if opset < 9
              else helper.make_node(op, ["relu", "scales"], ["up"], mode=mode))
    nodes = [helper.make_node("Conv", ["input", "w1"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"]), resize,
             helper.make_node("Conv", ["up", "w2"], ["conv2"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["conv2"], ["pool"]),
             helper.make_node("Reshape", ["pool", "shape"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fw", "fb"], ["output"], transB=1)]
    graph = helper.make_graph(
        nodes, "legacy", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                        ["N", 2, 5, 6])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


@pytest.mark.parametrize(("opset", "op", "mode", "scales"), [
    (7, "Upsample", "linear", [1, 1, 2, 3]),
    (9, "Upsample", "linear", [1, 1, 2.5, 1.5]),
    (9, "Upsample", "nearest", [1, 1, 1.7, 2.5]),
    (10, "Resize", "linear", [1, 1, 0.6, 1.5]),
    (10, "Resize", "nearest", [1, 1, 0.7, 0.5]),
])
def test_upgraded_resize_computes_what_the_original_did(opset, op, mode, scales):
    model = _legacy_model(opset, op, mode, scales)
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 6)).astype(np.float32)
    original = model.SerializeToString()
    with_up = onnx.ModelProto()
    with_up.CopyFrom(model)
    with_up.graph.output.append(helper.make_tensor_value_info("conv2", TensorProto.FLOAT, None))
    logits, conv2 = ort.InferenceSession(with_up.SerializeToString()).run(None, {"input": x})
    exp = onnx_cam.Explainer(original)
    got_logits, per_layer = exp.activations_and_gradients(x, targets=[0, 2], layers=["conv2"])
    np.testing.assert_allclose(got_logits, logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(per_layer["conv2"][0], conv2, rtol=1e-5, atol=1e-5)


def test_nearest_that_enlarges_and_shrinks_is_refused():
    model = _legacy_model(10, "Resize", "nearest", [1, 1, 2, 0.5])
    with pytest.raises(UnsupportedModelError, match="enlarges some axes and shrinks"):
        onnx_cam.Explainer(model.SerializeToString())
