"""Models as they are deployed: graphs saved by ONNX Runtime's optimiser, explained as bare
files. References: torch autograd with forward hooks (tests/torch_zoo.py), and the maps of the
plain float32 export of the same model."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch_zoo import Net, assert_close, reference

import onnx_cam
from onnx_cam.graph.cam_model import CamOutputs, build_cam_model
from onnx_cam.scopes import NAME_SCOPES_KEY, module_outputs

LEVELS = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
CONTRIB = ("com.microsoft", "com.microsoft.nchwc")


class Block(nn.Module):
    def __init__(self, conv, norm, c_in, c_out, stride):
        super().__init__()
        self.c1, self.b1 = conv(c_in, c_out, 3, stride, 1, bias=False), norm(c_out)
        self.c2, self.b2 = conv(c_out, c_out, 3, 1, 1, bias=False), norm(c_out)
        self.r1, self.r2 = nn.ReLU(), nn.ReLU()
        self.down = (nn.Identity() if c_in == c_out and stride == 1 else
                     nn.Sequential(conv(c_in, c_out, 1, stride, bias=False), norm(c_out)))

    def forward(self, x):
        return self.r2(self.b2(self.c2(self.r1(self.b1(self.c1(x))))) + self.down(x))


def resnet(dim: int) -> Net:
    """A ResNet-like net (stem, max-pool, two residual blocks, global pool, linear) with
    BatchNorm statistics calibrated on random batches."""
    conv, norm = (nn.Conv1d, nn.BatchNorm1d) if dim == 1 else (nn.Conv2d, nn.BatchNorm2d)
    pool, gap = ((nn.MaxPool1d, nn.AdaptiveAvgPool1d) if dim == 1
                 else (nn.MaxPool2d, nn.AdaptiveAvgPool2d))
    torch.manual_seed(dim)
    body = nn.Sequential(conv(3, 16, 7, 2, 3, bias=False), norm(16), nn.ReLU(), pool(3, 2, 1),
                         Block(conv, norm, 16, 16, 1), Block(conv, norm, 16, 32, 2),
                         gap(1), nn.Flatten(), nn.Linear(32, 5))
    net = Net(body, "Softmax").train()
    with torch.no_grad():
        for _ in range(4):
            net(torch.randn(8, 3, *[64] * dim))
    return net.eval()


def save_optimised(source: str, path, level: str) -> onnx.ModelProto:
    """The graph ONNX Runtime saves at `level` (SessionOptions.optimized_model_filepath)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.optimized_model_filepath = str(path)
    options.log_severity_level = 3
    ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return onnx.load(str(path))


@pytest.fixture(scope="module", params=[1, 2], ids=["1d", "2d"])
def deployed(request, tmp_path_factory):
    """(net, x, {"export": path, level: path}, {level: op counts})."""
    dim = request.param
    folder = tmp_path_factory.mktemp(f"deployed{dim}")
    net = resnet(dim)
    x = np.random.default_rng(dim).standard_normal((3, 3, *[32] * dim)).astype(np.float32)
    paths = {"export": folder / "export.onnx"}
    torch.onnx.export(net, torch.from_numpy(x), str(paths["export"]), dynamo=False,
                      opset_version=17, input_names=["x"], dynamic_axes={"x": {0: "N"}})
    ops = {}
    for level in LEVELS:
        paths[level] = folder / f"{level}.onnx"
        saved = save_optimised(str(paths["export"]), paths[level], level)
        ops[level] = collections.Counter((n.domain, n.op_type) for n in saved.graph.node)
    return net, x, paths, ops


@pytest.mark.parametrize("level", list(LEVELS))
def test_optimised_graph_equals_torch_and_the_export(deployed, level):
    net, x, paths, ops = deployed
    if level != "basic":
        assert ops[level][("com.microsoft", "FusedConv")] or any(
            domain == "com.microsoft.nchwc" for domain, _ in ops[level]), ops[level]
    exp, plain = onnx_cam.Explainer(paths[level]), onnx_cam.Explainer(paths["export"])
    # the block's first ReLU keeps its exporter name at every level; the deepest layer is
    # the last block's output, whatever name the optimiser left it
    inner = "/body/body.5/r1/Relu_output_0"
    assert inner in exp.layers and exp.layers[0] != inner
    assert all(onnx.defs.has(layer.op) for layer in exp.layer_info)  # standard ONNX ops
    assert not any(name.startswith("reorder_token") for name in exp.layers)
    layers = [exp.layers[0], inner]
    targets = np.array([0, 3, 4])
    logits_ref, _, ref = reference(net, x, ["body.5", "body.5.r1"], targets)
    logits, per_layer = exp.activations_and_gradients(x, targets=targets, layers=layers)
    assert_close(logits, logits_ref, "logits")
    for name, module in zip(layers, ["body.5", "body.5.r1"]):
        assert_close(per_layer[name][0], ref[module][0], f"activations of {name}")
        assert_close(per_layer[name][1], ref[module][1], f"gradients of {name}")
    got = exp.explain(x, targets=targets, layers=layers, methods=["gradcam", "hirescam"])
    want = plain.explain(x, targets=targets, layers=[plain.layers[0], inner],
                         methods=["gradcam", "hirescam"])
    for method in ("gradcam", "hirescam"):
        np.testing.assert_allclose(got.cam(method, layers[0]), want.cam(method, plain.layers[0]),
                                   atol=1e-4)
        np.testing.assert_allclose(got.cam(method, inner), want.cam(method, inner), atol=1e-4)


def test_nchwc_graph_is_unblocked(deployed):
    """At ORT_ENABLE_ALL a 2D model's convolutions and pools become NCHWc ops on CPUs with
    NCHWc kernels; the rewritten graph holds none of them and its Conv weights are the
    (BatchNorm-folded) OIHW weights again."""
    _, _, paths, ops = deployed
    if not any(domain == "com.microsoft.nchwc" for domain, _ in ops["all"]):
        pytest.skip("ONNX Runtime wrote no NCHWc ops for this model on this CPU")
    model = onnx_cam.Explainer(paths["all"]).model
    assert not any(n.domain in CONTRIB for n in model.proto.graph.node)
    extended = onnx_cam.Explainer(paths["extended"]).model.proto
    filters = [numpy_helper.to_array(t) for t in extended.graph.initializer if len(t.dims) > 2]
    for tensor in model.proto.graph.initializer:
        if len(tensor.dims) > 2:  # each filter equals one of the unblocked file's
            array = numpy_helper.to_array(tensor)
            assert any(w.shape == array.shape and np.array_equal(array, w)
                       for w in filters), tensor.name


class QuickGelu(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Mixer(nn.Module):
    """Conv, then token mixing with the patterns ONNX Runtime fuses at ORT_ENABLE_EXTENDED:
    Gelu, SkipLayerNormalization, FusedMatMul (transposed and scaled), QuickGelu, FusedGemm."""

    def __init__(self):
        super().__init__()
        self.conv, self.gelu = nn.Conv1d(3, 16, 5, padding=2), nn.GELU()
        self.fc, self.ln, self.q = nn.Linear(16, 16), nn.LayerNorm(16), nn.Linear(16, 16)
        self.conv2, self.act = nn.Conv1d(16, 16, 3, padding=1), QuickGelu()
        self.hidden, self.out = nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        t = self.gelu(self.conv(x)).transpose(1, 2)
        t = self.ln(t + F.gelu(self.fc(t), approximate="tanh"))
        attention = torch.softmax(torch.matmul(self.q(t), t.transpose(1, 2)) * 0.25, -1)
        y = self.act(self.conv2(torch.matmul(attention, t).transpose(1, 2)))
        return self.out(F.relu(self.hidden(y.mean(-1))))


def test_contrib_ops_equal_torch(tmp_path):
    torch.manual_seed(0)
    net = Net(Mixer().eval())
    x = np.random.default_rng(0).standard_normal((3, 3, 24)).astype(np.float32)
    torch.onnx.export(net, torch.from_numpy(x), str(tmp_path / "m.onnx"), dynamo=False,
                      opset_version=17, input_names=["x"], dynamic_axes={"x": {0: "N"}})
    saved = save_optimised(str(tmp_path / "m.onnx"), tmp_path / "ext.onnx", "extended")
    fused = {n.op_type for n in saved.graph.node if n.domain == "com.microsoft"}
    assert {"Gelu", "SkipLayerNormalization", "FusedMatMul", "QuickGelu", "FusedGemm"} <= fused
    exp = onnx_cam.Explainer(tmp_path / "ext.onnx")
    layers = ["/body/conv/Conv_output_0", exp.layers[0]]
    targets = np.array([1, 2, 3])
    logits_ref, _, ref = reference(net, x, ["body.conv", "body.act"], targets)
    logits, per_layer = exp.activations_and_gradients(x, targets=targets, layers=layers)
    assert_close(logits, logits_ref, "logits")
    for name, module in zip(layers, ["body.conv", "body.act"]):
        assert_close(per_layer[name][0], ref[module][0], f"activations of {name}")
        assert_close(per_layer[name][1], ref[module][1], f"gradients of {name}")


def test_bias_gelu_and_fast_gelu_equal_torch():
    """com.microsoft BiasGelu and FastGelu (with bias), as ONNX Runtime's transformer
    optimiser writes them, in a hand-built graph: Conv -> BiasGelu -> FastGelu -> mean ->
    Gemm."""
    torch.manual_seed(1)
    conv, head = nn.Conv1d(2, 8, 3, padding=1), nn.Linear(8, 3)
    b1, b2 = torch.randn(8, 1) * 0.3, torch.randn(8, 1) * 0.3

    class Body(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = conv, head

        def forward(self, x):
            y = F.gelu(self.conv(x).transpose(1, 2) + b1[:, 0]).transpose(1, 2)
            y = F.gelu(y.transpose(1, 2) + b2[:, 0], approximate="tanh").transpose(1, 2)
            return self.head(y.mean(-1))

    net = Net(Body().eval())
    w = {n: numpy_helper.from_array(v.detach().numpy().astype(np.float32), n) for n, v in {
        "w": conv.weight, "b": conv.bias, "b1": b1[:, 0], "b2": b2[:, 0],
        "hw": head.weight, "hb": head.bias}.items()}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1]),
             helper.make_node("Transpose", ["c"], ["ct"], perm=[0, 2, 1]),
             helper.make_node("BiasGelu", ["ct", "b1"], ["g1"], domain="com.microsoft"),
             helper.make_node("FastGelu", ["g1", "b2"], ["g2"], domain="com.microsoft"),
             helper.make_node("Transpose", ["g2"], ["y"], perm=[0, 2, 1]),
             helper.make_node("ReduceMean", ["y"], ["m"], axes=[2], keepdims=0),
             helper.make_node("Gemm", ["m", "hw", "hb"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 2, 20])], [helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, ["N", 3])], list(w.values()))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    exp = onnx_cam.Explainer(proto.SerializeToString())
    x = np.random.default_rng(1).standard_normal((2, 2, 20)).astype(np.float32)
    logits_ref, _, ref = reference(net, x, ["body.conv"], np.array([0, 2]))
    logits, per_layer = exp.activations_and_gradients(x, targets=np.array([0, 2]),
                                                      layers=["c", "y"])
    assert_close(logits, logits_ref, "logits")
    assert_close(per_layer["c"][0], ref["body.conv"][0], "conv activations")
    assert_close(per_layer["c"][1], ref["body.conv"][1], "conv gradients")


class Mobile(nn.Module):
    """MobileNet-like: ReLU6 (Clip), depthwise Conv + Hardswish, a HardSigmoid gate, and a
    nearest upsampling branch, an AveragePool, LeakyReLU and Tanh convolutions."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16),
                                nn.Hardswish())
        self.se1, self.se2 = nn.Conv2d(16, 16, 1), nn.Conv2d(16, 16, 1)
        self.pw = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU6())
        self.down, self.up = nn.Conv2d(32, 16, 3, 2, 1), nn.Upsample(scale_factor=2)
        self.mix = nn.Sequential(nn.Conv2d(48, 32, 3, padding=1), nn.LeakyReLU(0.1))
        self.dw2 = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(32, 32, 5, 1, 2, groups=32),
                                 nn.Tanh())
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        y = self.dw(self.stem(x))
        y = self.pw(y * F.hardsigmoid(self.se2(F.relu(self.se1(y.mean((2, 3), True))))))
        y = self.mix(torch.cat([y, self.up(torch.sigmoid(self.down(y)))], 1))
        return self.fc(F.adaptive_max_pool2d(self.dw2(y), 1).flatten(1))


def test_nchwc_mobile_ops_equal_torch(tmp_path):
    """Depthwise NCHWc convolutions with each fused activation, NCHWc Upsample and pools,
    against torch autograd. The layers lie after the upsampling (its gradient is the Resize
    rule's business) and before it, from the gate down."""
    torch.manual_seed(2)
    net = Net(Mobile()).train()
    with torch.no_grad():
        for _ in range(4):
            net(torch.randn(8, 3, 32, 32))
    net.eval()
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    torch.onnx.export(net, torch.from_numpy(x), str(tmp_path / "m.onnx"), dynamo=False,
                      opset_version=17, input_names=["x"], dynamic_axes={"x": {0: "N"}})
    saved = save_optimised(str(tmp_path / "m.onnx"), tmp_path / "all.onnx", "all")
    nchwc = {n.op_type for n in saved.graph.node if n.domain == "com.microsoft.nchwc"}
    if not nchwc:
        pytest.skip("ONNX Runtime wrote no NCHWc ops for this model on this CPU")
    assert {"Conv", "Upsample", "AveragePool"} <= nchwc
    exp = onnx_cam.Explainer(tmp_path / "all.onnx")
    layers = [exp.layers[0], "/body/mix/mix.1/LeakyRelu_output_0"]
    targets = np.array([1, 3])
    logits_ref, _, ref = reference(net, x, ["body.dw2", "body.mix"], targets)
    logits, per_layer = exp.activations_and_gradients(x, targets=targets, layers=layers)
    assert_close(logits, logits_ref, "logits")
    for name, module in zip(layers, ["body.dw2", "body.mix"]):
        assert_close(per_layer[name][0], ref[module][0], f"activations of {name}")
        assert_close(per_layer[name][1], ref[module][1], f"gradients of {name}")
    # below the upsampling: the activations only
    cam = build_cam_model(exp.model, ["/body/dw/dw.2/HardSwish_output_0"], (32, 32),
                          seed_from="prediction", outputs=CamOutputs(gradients=False))
    session = ort.InferenceSession(cam.proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    got = session.run([cam.activation_names[0]], {cam.input_name: x})[0]
    assert_close(got, reference(net, x, ["body.dw"], targets)[2]["body.dw"][0], "body.dw")


class Padded(nn.Module):
    """Channel counts that do not fill ONNX Runtime's NCHWc blocks (24, 20, 44, 40): a
    depthwise convolution, a residual sum and a concatenation of padded tensors."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1), nn.BatchNorm2d(24), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(24, 24, 3, 1, 1, groups=24), nn.BatchNorm2d(24),
                                nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(24, 24, 1), nn.BatchNorm2d(24))
        self.b = nn.Sequential(nn.Conv2d(24, 20, 3, 1, 1), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(44, 40, 3, 2, 1), nn.Sigmoid())
        self.fc = nn.Linear(40, 4)

    def forward(self, x):
        y = self.stem(x)
        y = y + self.pw(self.dw(y))
        return self.fc(self.c(torch.cat([y, self.b(y)], 1)).mean((2, 3)))


def test_nchwc_padded_channels_equal_torch(tmp_path):
    """ONNX Runtime pads such channels with zero filters to whole blocks: the rewritten
    graph holds the model's channels only, and its layers have the model's shapes."""
    torch.manual_seed(7)
    net = Net(Padded()).train()
    with torch.no_grad():
        net(torch.randn(8, 3, 32, 32))
    net.eval()
    x = np.random.default_rng(7).standard_normal((2, 3, 32, 32)).astype(np.float32)
    torch.onnx.export(net, torch.from_numpy(x), str(tmp_path / "m.onnx"), dynamo=False,
                      opset_version=17, input_names=["x"], dynamic_axes={"x": {0: "N"}})
    saved = save_optimised(str(tmp_path / "m.onnx"), tmp_path / "all.onnx", "all")
    weights = {t.name: t.dims[0] for t in saved.graph.initializer}
    if not any(n.domain == "com.microsoft.nchwc" and n.op_type == "Conv"
               and weights[n.input[1]] not in (24, 20, 40) for n in saved.graph.node):
        pytest.skip("ONNX Runtime padded no channels for this model on this CPU")
    exp = onnx_cam.Explainer(tmp_path / "all.onnx")
    plain = onnx_cam.Explainer(tmp_path / "m.onnx")
    assert [(la.name, la.shape) for la in exp.layer_info if la.op != "Conv"] == [
        (la.name, la.shape) for la in plain.layer_info if la.op != "Conv"]
    layers = ["/body/c/c.1/Sigmoid_output_0", "/body/b/b.1/Relu_output_0",
              "/body/dw/dw.2/Clip_output_0"]
    modules = ["body.c", "body.b", "body.dw"]
    targets = np.array([3, 1])
    logits_ref, _, ref = reference(net, x, modules, targets)
    logits, per_layer = exp.activations_and_gradients(x, targets=targets, layers=layers)
    assert_close(logits, logits_ref, "logits")
    for name, module in zip(layers, modules):
        assert_close(per_layer[name][0], ref[module][0], f"activations of {name}")
        assert_close(per_layer[name][1], ref[module][1], f"gradients of {name}")


class Waveform(nn.Module):
    """A raw-audio classifier in the Wav2Vec2 style: (N, T) samples, a strided convolutional
    feature encoder, mean pooling over time, a linear head."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv1d(1, 8, 10, 5), nn.GELU(), nn.Conv1d(8, 16, 3, 2),
                                     nn.GELU(), nn.Conv1d(16, 16, 3, 2), nn.GELU())
        self.head = nn.Linear(16, 3)

    def forward(self, samples):
        return self.head(self.encoder(samples.unsqueeze(1)).mean(-1))


def test_raw_signal_input_equals_torch(tmp_path):
    torch.manual_seed(3)
    net = Net(Waveform().eval(), "Softmax")
    x = np.random.default_rng(3).standard_normal((3, 400)).astype(np.float32)
    path = tmp_path / "wave.onnx"
    torch.onnx.export(net, torch.from_numpy(x), str(path), dynamo=False, opset_version=17,
                      input_names=["samples"], dynamic_axes={"samples": {0: "N", 1: "T"}})
    exp = onnx_cam.Explainer(path)
    assert exp.model.input_shape == (None, 1, None) and exp.num_classes == 3
    layers = ["/body/encoder/encoder.5/Mul_1_output_0", "/body/encoder/encoder.2/Conv_output_0"]
    assert layers[0] == exp.layers[0] and layers[1] in exp.layers
    targets = np.array([0, 2, 1])
    logits_ref, _, ref = reference(net, x, ["body.encoder.5", "body.encoder.2"], targets)
    logits, per_layer = exp.activations_and_gradients(x, targets=targets, layers=layers)
    assert_close(logits, logits_ref, "logits")
    for name, module in zip(layers, ["body.encoder.5", "body.encoder.2"]):
        assert_close(per_layer[name][0], ref[module][0], f"activations of {name}")
        assert_close(per_layer[name][1], ref[module][1], f"gradients of {name}")
    flat = exp.explain(x, targets=targets, layers=layers[0])
    channel = exp.explain(x[:, None], targets=targets, layers=layers[0])
    assert flat.cam("gradcam", layers[0]).shape == (3, 400)
    np.testing.assert_array_equal(flat.cam("gradcam", layers[0]),
                                  channel.cam("gradcam", layers[0]))
    with pytest.raises(onnx_cam.InputError, match="rank"):
        exp.explain(x[0])


class SharedAct(nn.Module):
    """A ReLU module called twice, BatchNorms the exporter folds into their convolutions, a
    residual block and a module returning a tensor computed before its last node."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv1d(2, 8, 5, padding=2), nn.BatchNorm1d(8)
        self.act = nn.ReLU()
        self.block = Block(nn.Conv1d, nn.BatchNorm1d, 8, 16, 2)
        self.conv2 = nn.Conv1d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        y = self.act(self.bn1(self.conv1(x)))
        y = self.act(self.conv2(self.block(y)))
        return self.head(y.mean(-1))


@pytest.mark.slow  # the dynamo exporter takes seconds per model
def test_dynamo_export_layers_are_named_after_their_modules(tmp_path):
    torch.manual_seed(4)
    net = Net(SharedAct()).train()
    with torch.no_grad():
        net(torch.randn(8, 2, 48))
    net.eval()
    x = np.random.default_rng(4).standard_normal((2, 2, 48)).astype(np.float32)
    path = tmp_path / "dynamo.onnx"
    torch.onnx.export(net, (torch.from_numpy(x),), str(path), dynamo=True,
                      dynamic_shapes={"x": {0: torch.export.Dim("N")}}, input_names=["x"])
    exp = onnx_cam.Explainer(path)
    assert exp.layers[0] == "body.act"
    named = [layer for layer in exp.layer_info if layer.name.startswith("body")]
    assert {"body.bn1", "body.block", "body.block.r1", "body.block.b2"} <= {
        layer.name for layer in named}
    modules = dict(net.named_modules())
    assert all(layer.name in modules for layer in named)
    _, _, ref = reference(net, x, [layer.name for layer in named], np.array([0, 1]))
    _, per_layer = exp.activations_and_gradients(x, targets=np.array([0, 1]),
                                                 layers=[layer.name for layer in named])
    for layer in named:  # each name is its module's output as torch computes it
        assert_close(per_layer[layer.name][0], ref[layer.name][0], f"{layer.name} output")
        assert_close(per_layer[layer.name][1], ref[layer.name][1], f"{layer.name} gradient")


class ChannelShuffle(nn.Module):
    """ShuffleNet's shuffle and a pooled head, with every Reshape target read from x.shape."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.act, self.fc = nn.ReLU(), nn.Linear(8, 3)

    def forward(self, x):
        y = torch.relu(self.a(x))
        n, c, h, w = y.shape
        y = y.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, -1, h, w)
        y = self.act(self.b(y))
        return self.fc(y.reshape(y.shape[0], y.shape[1], -1).mean(-1))


def test_reshape_targets_read_from_a_dynamic_batch_equal_torch(tmp_path):
    torch.manual_seed(5)
    net = Net(ChannelShuffle().eval())
    x = np.random.default_rng(5).standard_normal((3, 3, 12, 12)).astype(np.float32)
    path = tmp_path / "shuffle.onnx"
    torch.onnx.export(net, torch.from_numpy(x), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], dynamic_axes={"x": {0: "N"}})
    assert sum(n.op_type == "Shape" for n in onnx.load(str(path)).graph.node) >= 2
    exp = onnx_cam.Explainer(path)
    layers = ["/body/a/Conv_output_0", "/body/act/Relu_output_0"]
    assert exp.layers[0] == layers[1]
    targets = np.array([2, 0, 1])
    logits_ref, _, ref = reference(net, x, ["body.a", "body.act"], targets)
    logits, per_layer = exp.activations_and_gradients(x, targets=targets, layers=layers)
    assert_close(logits, logits_ref, "logits")
    for name, module in zip(layers, ["body.a", "body.act"]):
        assert_close(per_layer[name][0], ref[module][0], f"activations of {name}")
        assert_close(per_layer[name][1], ref[module][1], f"gradients of {name}")


class StridedHead(nn.Module):
    """A head reading 3 x 3 positions of each map through as_strided, as the dynamo exporter
    writes it: a Gather on the flattened tensor with indices built from Range(0, N)."""

    def __init__(self):
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.fc = nn.Linear(8 * 9, 3)

    def forward(self, x):
        y = self.act(self.conv(x))
        y = y.as_strided((y.shape[0], 8, 3, 3), (8 * 49, 49, 14, 3), 1)
        return self.fc(y.flatten(1))


@pytest.mark.slow  # the dynamo exporter takes seconds per model
def test_dynamo_as_strided_gather_equals_torch(tmp_path):
    torch.manual_seed(6)
    net = Net(StridedHead()).eval()
    x = np.random.default_rng(6).standard_normal((3, 3, 7, 7)).astype(np.float32)
    path = tmp_path / "strided.onnx"
    torch.onnx.export(net, (torch.from_numpy(x),), str(path), dynamo=True,
                      dynamic_shapes={"x": {0: torch.export.Dim("N")}}, input_names=["x"])
    nodes = onnx.load(str(path)).graph.node
    assert {"Range", "Gather"} <= {n.op_type for n in nodes}
    exp = onnx_cam.Explainer(path)
    targets = np.array([2, 0, 1])
    logits_ref, _, ref = reference(net, x, ["body.act", "body.conv"], targets)
    for batch in (3, 1):  # the prepared graph serves every batch size
        logits, per_layer = exp.activations_and_gradients(
            x[:batch], targets=targets[:batch], layers=["body.act", "body.conv"])
        assert_close(logits, logits_ref[:batch], "logits")
        for name in ("body.act", "body.conv"):
            assert_close(per_layer[name][0], ref[name][0][:batch], f"activations of {name}")
            assert_close(per_layer[name][1], ref[name][1][:batch], f"gradients of {name}")


def test_batch_dependent_reshape_target_stays_exact_for_every_batch():
    """A Reshape target [2 * Shape(y)[0], Shape(y)[1] * Shape(y)[2] / 2] is made static as
    [-1, 12]; the prepared graph, run at several batch sizes, against numpy."""
    h = helper
    nodes = [
        h.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1]),
        h.make_node("Shape", ["y"], ["s"]),
        h.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        h.make_node("Gather", ["s", "one"], ["c"], axis=0),
        h.make_node("Gather", ["s", "two"], ["t"], axis=0),
        h.make_node("Mul", ["n", "two"], ["n2"]),
        h.make_node("Div", ["t", "two"], ["t2"]),
        h.make_node("Mul", ["c", "t2"], ["ct2"]),
        h.make_node("Unsqueeze", ["n2", "axis0"], ["n2u"]),
        h.make_node("Unsqueeze", ["ct2", "axis0"], ["ct2u"]),
        h.make_node("Concat", ["n2u", "ct2u"], ["target"], axis=0),
        h.make_node("Reshape", ["y", "target"], ["z"]),
        h.make_node("ReduceMean", ["z"], ["m"], axes=[1], keepdims=0),
        h.make_node("Reshape", ["m", "pair"], ["out"]),
    ]
    rng = np.random.default_rng(8)
    w = rng.standard_normal((4, 3, 1)).astype(np.float32)
    weights = [numpy_helper.from_array(np.asarray(v, np.int64), name) for name, v in {
        "zero": 0, "one": 1, "two": 2, "axis0": [0], "pair": [-1, 2]}.items()]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TensorProto.FLOAT,
                                                               ["N", 3, 6])],
                         [h.make_tensor_value_info("out", TensorProto.FLOAT, ["M", 2])],
                         weights + [numpy_helper.from_array(w, "w")])
    exp = onnx_cam.Explainer(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]))
    prepared = exp.model.graph((6,))
    assert prepared.tensors()["z"].shape[1] == 12
    assert not any(node.op == "Shape" for node in prepared.nodes)
    session = ort.InferenceSession(gs.export_onnx(prepared).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    for batch in (1, 3, 4):
        x = rng.standard_normal((batch, 3, 6)).astype(np.float32)
        y = np.einsum("oc,nct->not", w[:, :, 0], x)
        want = y.reshape(2 * batch, 12).mean(1).reshape(-1, 2)
        np.testing.assert_allclose(session.run(None, {"x": x})[0], want, rtol=1e-5)


def test_name_scopes_are_not_trusted_on_a_partly_rewritten_graph():
    """A node without name scopes (a tool rewrote part of the graph) could hide a module's
    real output: no names are read at all then."""
    def node(op, inputs, output, scopes):
        made = helper.make_node(op, inputs, [output])
        if scopes is not None:
            made.metadata_props.add(key=NAME_SCOPES_KEY, value=repr(scopes))
        return made

    nodes = [node("Conv", ["x", "w"], "a", ["", "block", "block.conv", "conv2d"]),
             node("Relu", ["a"], "b", ["", "block", "block.act", "relu"])]
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info(
        "b", TensorProto.FLOAT, None)])
    assert module_outputs(helper.make_model(graph)) == {"block": "b", "block.act": "b",
                                                        "block.conv": "a"}
    graph.node[1].ClearField("metadata_props")  # the block's last node, rewritten
    assert module_outputs(helper.make_model(graph)) == {}
