"""Every mistake a user can make raises an OnnxCamError whose message names it and the fix."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import export_bytes, small_cnn
from onnx import TensorProto, helper
from torch import nn

import onnx_cam
from onnx_cam import (
    InputError,
    LayerError,
    MethodError,
    ModelLoadError,
    OnnxCamError,
    TargetError,
    UnsupportedOpError,
)


@pytest.fixture(scope="module")
def exp(cnn1d):
    return onnx_cam.Explainer(cnn1d[2])


@pytest.mark.parametrize("shape, words", [
    ((2, 40), "x[None]"),            # batch axis forgotten
    ((1, 2, 3, 40), "rank 3"),
    ((2, 5, 40), "2 channels"),
])
def test_wrong_rank_or_channels(exp, shape, words):
    with pytest.raises(InputError, match=words.replace("[", r"\[").replace("]", r"\]")):
        exp.explain(np.zeros(shape, np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_name_the_items(exp, bad):
    x = np.zeros((4, 2, 40), np.float32)
    x[2, 1, 7] = bad
    with pytest.raises(InputError, match=r"Items \[2\] contain NaN or Inf"):
        exp.explain(x)


def test_unknown_layer_lists_candidates(exp):
    with pytest.raises(LayerError, match="Unknown layer 'layer9'.*Candidate layers"):
        exp.explain(np.zeros((1, 2, 40), np.float32), layers="layer9")


def test_layer_without_spatial_extent(exp):
    with pytest.raises(LayerError, match="needs channel and spatial axes"):
        exp.explain(np.zeros((1, 2, 40), np.float32), layers="/4/GlobalAveragePool_output_0")


@pytest.mark.parametrize("targets, words", [
    (3, "out of range: the model scores classes 0..2"),
    (-1, "out of range"),
    ([0, 1], "2 targets given for 3 items"),
    ("cat", "Give class_names="),
    (1.5, "give a class index or a class name"),
])
def test_bad_targets(exp, targets, words):
    with pytest.raises(TargetError, match=words):
        exp.explain(np.zeros((3, 2, 40), np.float32), targets=targets)


@pytest.mark.parametrize("targets, foils, words", [
    ("top9", None, "asks for 9 classes"),
    ([[0, 1], []], None, "target list of item 1 is empty"),
    (0, [1, 2, 0], "3 foils given for 2 items"),
])
def test_bad_target_lists(exp, targets, foils, words):
    with pytest.raises(TargetError, match=words):
        exp.explain(np.zeros((2, 2, 40), np.float32), targets=targets, foils=foils)


def test_unknown_score(exp):
    with pytest.raises(TargetError, match="score='softmax' is not one of"):
        exp.explain(np.zeros((1, 2, 40), np.float32), score="softmax")


def test_unknown_method(exp):
    with pytest.raises(MethodError, match="Unknown CAM method 'gradkam'.*gradcam"):
        exp.explain(np.zeros((1, 2, 40), np.float32), methods="gradkam")


def test_unreadable_and_non_onnx_files(tmp_path):
    with pytest.raises(ModelLoadError, match="No model file"):
        onnx_cam.Explainer(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model at all" * 10)
    with pytest.raises(ModelLoadError, match="not a readable ONNX model|checker rejects"):
        onnx_cam.Explainer(junk)
    with pytest.raises(ModelLoadError, match="Cannot load a model from a list"):
        onnx_cam.Explainer([1, 2])


def test_checker_rejects_broken_graph():
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [1, 2, 3])],
                              [helper.make_tensor_value_info("z", 1, [1, 2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelLoadError, match="checker"):
        onnx_cam.Explainer(model.SerializeToString())


def test_op_without_rule_names_op_node_and_supported_list():
    # a Conv feeding an op with no gradient rule (Cos) before the head
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 2, 3], np.ones(18, np.float32))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Cos", ["c"], ["k"], name="the_cos"),
             helper.make_node("ReduceMean", ["k"], ["y"], name="gap", axes=[2], keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, ["N", 2, 10])],
                              [helper.make_tensor_value_info("y", 1, ["N", 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    exp = onnx_cam.Explainer(model)
    with pytest.raises(UnsupportedOpError, match="Op Cos \\(node 'the_cos'\\).*Supported ops:"):
        exp.explain(np.ones((1, 2, 10), np.float32), layers="c")


def test_custom_domain_op_never_takes_the_standard_rule():
    import onnx_graphsurgeon as gs

    from onnx_cam.graph.autodiff import add_gradients
    from onnx_cam.graph.builder import GradBuilder

    x = gs.Variable("x", np.float32, [1, 4])
    hidden, y = gs.Variable("h", np.float32, [1, 4]), gs.Variable("y", np.float32, [1, 4])
    graph = gs.Graph(nodes=[gs.Node("Relu", "custom_relu", inputs=[x], outputs=[hidden],
                                    domain="my.ops"),
                            gs.Node("Relu", "relu", inputs=[hidden], outputs=[y])],
                     inputs=[x], outputs=[y], opset=17)
    seed = gs.Variable("seed", np.float32, [1, 4])
    with pytest.raises(UnsupportedOpError, match="Op my.ops.Relu \\(node 'custom_relu'\\)"):
        add_gradients(GradBuilder(graph, 17), y, seed, ["x"])


def test_errors_share_one_base_class():
    for cls in (InputError, LayerError, MethodError, ModelLoadError, TargetError,
                UnsupportedOpError):
        assert issubclass(cls, OnnxCamError)


def test_model_without_conv_has_no_layers():
    model = nn.Sequential(nn.Flatten(), nn.Linear(20, 3)).eval()
    x = torch.randn(2, 2, 10)
    with pytest.raises(OnnxCamError, match="no layer a CAM can be computed on"):
        onnx_cam.Explainer(export_bytes(model, x))


def test_torch_model_needs_example_input():
    with pytest.raises(InputError, match="example_input="):
        onnx_cam.Explainer(small_cnn(1))


def test_class_names_must_match_class_count(cnn1d):
    with pytest.raises(TargetError, match="class_names has 2 names but the model scores 3"):
        onnx_cam.Explainer(cnn1d[2], class_names=["a", "b"])


def test_corrupt_saved_explanation(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"garbage")
    with pytest.raises(OnnxCamError, match="not an explanation saved by Explanation.save"):
        onnx_cam.Explanation.load(path)


def test_onnx_proto_is_accepted_as_is(cnn1d):
    proto = onnx.load_from_string(cnn1d[2])
    assert onnx_cam.Explainer(proto).layers
