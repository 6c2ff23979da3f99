"""Deployed float forms: unsorted graphs, float16 (both ONNX Runtime float16 conversions and
onnxconverter-common's), bfloat16 built by casting.

References: the float32 export's own maps (float16 must match them to 2e-2), and torch autograd
in float64 of the same module with its weights and input rounded to float16. ONNX Runtime's
float16 forward rounds every intermediate tensor to float16 (unit roundoff 2^-11 = 4.9e-4):
activations are compared to 4e-3 of the reference's largest magnitude (8 roundoffs; measured
5e-4). Gradients are computed in float32 from the float16 forward tensors, so they differ from
the float64 reference only by float32 rounding and are compared to 1e-4 (measured 8e-8); a
gradient computed in float16 would miss that by its own roundoff.
"""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402
from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: E402
from torch import nn  # noqa: E402

import onnx_cam  # noqa: E402
from onnx_cam.errors import ModelLoadError  # noqa: E402

RTOL = {"activation": 4e-3, "gradient": 1e-4}


def cnn(dim: int) -> nn.Module:
    conv = {1: nn.Conv1d, 2: nn.Conv2d}[dim]
    norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dim]
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}[dim]
    torch.manual_seed(dim)
    net = nn.Sequential(conv(3, 8, 3, padding=1), norm(8), nn.ReLU(),
                        conv(8, 12, 3, stride=2, padding=1), nn.ReLU(),
                        pool(1), nn.Flatten(), nn.Linear(12, 5))
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


def export(net: nn.Module, x: np.ndarray) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(x),), buffer, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})
    return onnx.load_from_string(buffer.getvalue())


SHAPES = {1: (4, 3, 48), 2: (4, 3, 16, 16)}
LAYERS = {"/2/Relu_output_0": 2, "/4/Relu_output_0": 4}  # tensor -> module index


def float16_forms(proto: onnx.ModelProto) -> dict[str, onnx.ModelProto]:
    forms = {}
    for keep in (False, True):
        forms[f"ort keep_io_types={keep}"] = convert_float_to_float16(copy.deepcopy(proto),
                                                                      keep_io_types=keep)
    try:
        from onnxconverter_common import float16
    except ImportError:
        return forms
    forms["onnxconverter-common"] = float16.convert_float_to_float16(copy.deepcopy(proto))
    return forms


def keeper(outs: dict, key):
    """A forward hook keeping a module's output (and, later, its gradient) in outs[key]."""
    def hook(_module, _inputs, out):
        out.retain_grad()
        outs[key] = out
    return hook


def torch_reference(net: nn.Module, x: np.ndarray, layers: list[int], classes: np.ndarray):
    """float64 autograd of `net` with weights and input rounded to float16: per module index,
    (activation, d logit[class] / d activation)."""
    net64 = copy.deepcopy(net).double()
    net64.load_state_dict({k: v.half().double() if v.is_floating_point() else v
                           for k, v in net.state_dict().items()})
    outs = {}
    hooks = [net64[i].register_forward_hook(keeper(outs, i)) for i in layers]
    xt = torch.from_numpy(x.astype(np.float16).astype(np.float64)).requires_grad_(True)
    logits = net64(xt)
    for h in hooks:
        h.remove()
    logits[torch.arange(len(x)), torch.as_tensor(classes)].sum().backward()
    return {k: (o.detach().numpy(), o.grad.numpy()) for k, o in outs.items()}


@pytest.mark.parametrize("dim", [1, 2])
def test_float16_matches_float32_maps_and_float64_autograd(dim):
    x = np.random.default_rng(dim).standard_normal(SHAPES[dim]).astype(np.float32)
    net = cnn(dim)
    proto = export(net, x)
    plain = onnx_cam.Explainer(proto)
    maps = plain.explain(x, layers=list(LAYERS), methods=["gradcam", "hirescam"])
    for form, model in float16_forms(proto).items():
        exp = onnx_cam.Explainer(model)
        assert set(LAYERS) <= set(exp.layers), form
        got = exp.explain(x, layers=list(LAYERS), methods=["gradcam", "hirescam"])
        for method in ("gradcam", "hirescam"):
            for layer in LAYERS:
                diff = np.abs(got.cam(method, layer) - maps.cam(method, layer)).max()
                assert diff <= 2e-2, f"{form} {method} {layer}: maps differ by {diff}"
        logits, per_layer = exp.activations_and_gradients(x, layers=list(LAYERS))
        assert logits.dtype == np.float32
        classes = logits.argmax(axis=1)
        ref = torch_reference(net, x, list(LAYERS.values()), classes)
        for layer, index in LAYERS.items():
            for what, ours, theirs in zip(("activation", "gradient"), per_layer[layer],
                                          ref[index]):
                assert ours.dtype == np.float32
                err = np.abs(ours - theirs).max() / np.abs(theirs).max()
                assert err <= RTOL[what], f"{form} {layer} {what}: relative error {err:.2e}"


def test_float16_rewrite_keeps_float16_ops():
    x = np.random.default_rng(0).standard_normal(SHAPES[2]).astype(np.float32)
    model = convert_float_to_float16(export(cnn(2), x), keep_io_types=False)
    exp = onnx_cam.Explainer(model)
    from onnx_cam.graph.cam_model import build_cam_model
    cam = build_cam_model(exp.model, ["/4/Relu_output_0"], (16, 16))
    types = {i.name: i.type.tensor_type.elem_type for i in cam.proto.graph.input}
    assert types["input"] == TensorProto.FLOAT  # fed as float32, cast inside
    convs = [n for n in cam.proto.graph.node if n.op_type == "Conv" and "onnx_cam" not in n.name]
    inferred = onnx.shape_inference.infer_shapes(cam.proto)
    elem = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    assert all(elem[n.output[0]] == TensorProto.FLOAT16 for n in convs)
    assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in cam.proto.graph.output)


class Bfloat16Round(nn.Module):
    """Holds its input in bfloat16 (what a bfloat16 deployment stores between ops)."""

    def forward(self, x):
        return x.to(torch.bfloat16)


class Widen(nn.Module):
    """Back to float32 (float64 for the reference)."""

    dtype = torch.float32

    def forward(self, x):
        return x.to(self.dtype)


def test_bfloat16_by_casting_matches_autograd():
    """A bfloat16 layer: its activation is exposed as float32 and its gradient computed in
    float32. torch's own gradient there is rounded to bfloat16, so the reference runs in
    float64 and reads the gradient after the cast back (casts pass gradients through)."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), Bfloat16Round(), Widen(),
                        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 4)).eval()
    x = np.random.default_rng(3).standard_normal((3, 3, 10, 10)).astype(np.float32)
    exp = onnx_cam.Explainer(export(net, x))
    bf16_layer = "/2/Cast_output_0"
    assert bf16_layer in exp.layers
    logits, per_layer = exp.activations_and_gradients(x, layers=[bf16_layer, "/5/Relu_output_0"])
    net64 = copy.deepcopy(net).double()
    net64[3].dtype = torch.float64
    outs = {}
    for i in (3, 5):
        net64[i].register_forward_hook(keeper(outs, i))
    ref_logits = net64(torch.from_numpy(x).double())
    np.testing.assert_allclose(logits, ref_logits.detach().numpy(), atol=1e-5)
    ref_logits[torch.arange(len(x)), ref_logits.argmax(1)].sum().backward()
    for layer, index in ((bf16_layer, 3), ("/5/Relu_output_0", 5)):
        act, grad = per_layer[layer]
        ref_act, ref_grad = outs[index].detach().numpy(), outs[index].grad.numpy()
        np.testing.assert_allclose(act, ref_act, atol=1e-5 * np.abs(ref_act).max())
        np.testing.assert_allclose(grad, ref_grad, atol=1e-5 * np.abs(ref_grad).max())


# ---------------------------------------------------------------------------- node order
def _reversed_nodes(proto: onnx.ModelProto) -> onnx.ModelProto:
    shuffled = onnx.ModelProto()
    shuffled.CopyFrom(proto)
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in proto.graph.node][::-1]
    del shuffled.graph.node[:]
    shuffled.graph.node.extend(nodes)
    return shuffled


def test_unsorted_graph_is_sorted_and_explained_as_the_sorted_one():
    x = np.random.default_rng(1).standard_normal(SHAPES[1]).astype(np.float32)
    proto = export(cnn(1), x)
    shuffled = _reversed_nodes(proto)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(shuffled)
    want = onnx_cam.Explainer(proto).explain(x).cam()
    got = onnx_cam.Explainer(shuffled).explain(x).cam()
    np.testing.assert_array_equal(got, want)
    assert [n.op_type for n in shuffled.graph.node][0] == "Gemm"  # the caller's copy untouched


def test_unsorted_subgraph_is_sorted():
    body_nodes = [helper.make_node("Relu", ["t"], ["out"]),   # reads t before it is made
                  helper.make_node("Neg", ["outer"], ["t"])]  # reads the enclosing graph
    body = helper.make_graph(body_nodes, "branch", [],
                             [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], then_branch=body, else_branch=body),
         helper.make_node("Abs", ["x"], ["outer"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
              helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    from onnx_cam.graph.toposort import sorted_model
    fixed = sorted_model(model)
    onnx.checker.check_model(fixed)
    assert [n.op_type for n in fixed.graph.node] == ["Abs", "If"]
    assert [n.op_type for n in fixed.graph.node[1].attribute[0].g.node] == ["Neg", "Relu"]


def test_cycle_is_refused_by_name():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["b"], ["a"], name="first"),
         helper.make_node("Neg", ["a"], ["b"], name="second")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4])],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelLoadError, match=r"cycle.*'first', 'second'"):
        onnx_cam.Explainer(model)
