"""1D graphs run at height 1 (graph/lift_1d.py): the same outputs as the 1D graph and as torch,
for every op the rewrite lifts, every way an operand broadcasts onto a lifted tensor, and every
way a lifted tensor leaves its region."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import onnx_cam
from onnx_cam import runtime
from onnx_cam.graph.lift_1d import lift_1d


class Everything1d(nn.Module):
    """Every op family lift_1d rewrites, with operands of ranks 1, 2 and 3 broadcasting onto
    (N, C, L), and lifted tensors leaving through Flatten, Reshape, Softmax and the outputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 5, stride=2, padding=3, dilation=2)
        self.grouped = nn.Conv1d(8, 8, 3, padding="same", groups=4, bias=False)
        self.prelu = nn.PReLU(8)
        self.norm = nn.BatchNorm1d(8)   # after a PReLU, so the export cannot fold it
        self.up = nn.ConvTranspose1d(8, 4, 4, stride=2, padding=1, output_padding=1)
        self.pool = nn.MaxPool1d(3, 2, padding=1, ceil_mode=True)
        self.avg = nn.AvgPool1d(3, 2, padding=1, count_include_pad=False)
        self.per_channel = nn.Parameter(torch.rand(8, 1) + 0.5)      # rank 2: (C, 1)
        self.per_position = nn.Parameter(torch.rand(11) + 0.5)       # rank 1: (L,)
        self.head = nn.Linear(8 * 11, 3)

    def forward(self, x):
        y = self.norm(self.prelu(self.conv(x)))
        y = torch.relu(self.grouped(y)) * self.per_channel + torch.sigmoid(y)
        z = self.up(y)                                                # (N, 4, 2L + 1)
        z = torch.cat([z, torch.tanh(z)], dim=1)                      # channel concat
        z = torch.cat([z, z[:, :, :3]], dim=-1)                       # concat along L
        z = torch.where(z > 0, z, 0.1 * z)
        p = self.avg(self.pool(z)) * self.per_position
        logits = self.head(p.flatten(1))
        return logits, torch.softmax(p, dim=1), p.reshape(len(x), -1)


def export(model: nn.Module, x: torch.Tensor, names: list[str]) -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.onnx.export(model.eval(), (x,), buf, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=names,
                      dynamic_axes={"x": {0: "n"}, **{n: {0: "n"} for n in names}})
    return onnx.load_from_string(buf.getvalue())


def run(proto: onnx.ModelProto, feeds: dict, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def spatial_ranks(proto: onnx.ModelProto) -> set[int]:
    """The kernel_shape lengths of the graph's convolutions and pools."""
    return {len(a.ints) for n in proto.graph.node for a in n.attribute
            if n.op_type in ("Conv", "ConvTranspose", "MaxPool", "AveragePool")
            and a.name == "kernel_shape"}


def test_lifted_graph_computes_what_the_1d_graph_and_torch_compute():
    torch.manual_seed(0)
    model = Everything1d()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        model.norm.running_mean.uniform_(-0.5, 0.5)
        model.norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(4, 3, 40)
    proto = export(model, x, ["logits", "probs", "flat"])
    lifted = lift_1d(proto)
    assert spatial_ranks(proto) == {1} and spatial_ranks(lifted) == {2}
    assert [i.name for i in lifted.graph.input] == ["x"]
    assert [o.name for o in lifted.graph.output] == ["logits", "probs", "flat"]
    onnx.checker.check_model(lifted)
    feeds = {"x": x.numpy()}
    with torch.no_grad():
        expected = [t.numpy() for t in model(x)]
    plain = run(lifted, feeds, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    for got, ref, want in zip(run(lifted, feeds), plain, expected):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(ref, want, rtol=1e-4, atol=1e-5)
    for got, want in zip(plain, run(proto, feeds, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_max_pool_indices_and_global_pools_leave_the_region_as_they_were():
    """MaxPool's flat indices are the same numbers at height 1; a GlobalAveragePool's
    (N, C, 1) comes back (N, C, 1)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 9])
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(2, 2, 3))
                                .astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1]),
             helper.make_node("MaxPool", ["c"], ["m", "i"], kernel_shape=[2], strides=[2]),
             helper.make_node("GlobalAveragePool", ["m"], ["g"])]
    outputs = [helper.make_tensor_value_info("i", TensorProto.INT64, None),
               helper.make_tensor_value_info("g", TensorProto.FLOAT, None)]
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], outputs, [w]),
                              opset_imports=[helper.make_opsetid("", 13)])
    lifted = lift_1d(proto)
    assert spatial_ranks(lifted) == {2}
    feeds = {"x": np.random.default_rng(1).normal(size=(3, 2, 9)).astype(np.float32)}
    c = run(helper.make_model(helper.make_graph(nodes[:1], "c", [x], [
        helper.make_tensor_value_info("c", TensorProto.FLOAT, None)], [w]),
        opset_imports=[helper.make_opsetid("", 13)]), feeds)[0]
    windows = c[:, :, :8].reshape(3, 2, 4, 2)
    flat = np.arange(c.size).reshape(c.shape)[:, :, :8].reshape(3, 2, 4, 2)
    indices, pooled = run(lifted, feeds)
    np.testing.assert_array_equal(
        indices, np.take_along_axis(flat, windows.argmax(-1)[..., None], -1)[..., 0])
    np.testing.assert_allclose(pooled, windows.max(-1).mean(-1, keepdims=True), rtol=1e-6)


def test_graphs_without_1d_convolutions_are_left_as_they_are():
    torch.manual_seed(0)
    image = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(1, 3, 8, 8)
    image(x)
    tokens = nn.Sequential(nn.Linear(6, 6), nn.GELU(), nn.LayerNorm(6))  # (N, T, D): rank 3
    for model, sample in ((image, x), (tokens, torch.randn(2, 5, 6))):
        proto = export(model, sample, ["y"])
        assert lift_1d(proto) is proto


def test_sessions_are_lifted_only_where_the_blocked_layout_runs(monkeypatch):
    seen = []
    real = runtime.lift_1d
    monkeypatch.setattr(runtime, "lift_1d", lambda proto: seen.append(1) or real(proto))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                        nn.Linear(4, 3))
    for options, lifts in ((onnx_cam.RuntimeOptions(), True),
                           (onnx_cam.RuntimeOptions(exact_routes=True), False),
                           (onnx_cam.RuntimeOptions(optimization="extended"), False)):
        seen.clear()
        exp = onnx_cam.Explainer(net, example_input=torch.randn(1, 2, 16), runtime=options)
        exp.explain(np.random.default_rng(0).normal(size=(2, 2, 16)).astype(np.float32))
        assert bool(seen) == lifts
    cuda = onnx_cam.RuntimeOptions(providers=(runtime.CUDA, runtime.CPU))
    assert not runtime._blocked_layout(cuda, cuda.resolved_providers())
