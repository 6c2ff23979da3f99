"""Tests for onnx_cam.converters.export_torch.

The layer map is checked independently of the converter: forward hooks record every module's
real output (last call), the mapped tensors are exposed as extra graph outputs and run with
onnxruntime, and both must agree.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
nn = torch.nn

from onnx_cam.converters import LAYER_MAP_KEY, export_torch  # noqa: E402


# ----------------------------------------------------------------------------- test models
class BasicBlock(nn.Module):
    """torchvision-style block: one in-place ReLU module called twice, in-place residual add."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2))
        self.layer3 = nn.Sequential(BasicBlock(16, 16))
        self.layer4 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class FeaturesNet(nn.Module):
    """Sequential features with a nested Sequential, Dropout/Identity, Flatten+Linear, Softmax."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
            nn.Dropout(0.5),
            nn.MaxPool2d(2),
            nn.Identity(),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.Dropout(0.2), nn.Linear(16, 3)
        )
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        return self.softmax(self.head(self.features(x)))


def conv1d_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(2, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(),
        nn.Conv1d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 4),
    )


def conv3d_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.MaxPool3d(2),
        nn.Conv3d(4, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 2),
    )


class Mixer(nn.Module):
    """Container with an op of its own between its children."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x) * 2.0)


class Pair(nn.Module):
    """Returns a tuple; the first element is computed first."""

    def forward(self, x):
        return x[:, :4] * 2.0, x.mean(dim=(2, 3))


class CalledTwice(nn.Module):
    """A container called twice, a tuple-output module, two outputs, a pass-through after an
    in-place edit (must stay unmapped)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mixer = Mixer(8)
        self.pair = Pair()
        self.fc = nn.Linear(8, 3)
        self.ident = nn.Identity()

    def forward(self, x):
        x = self.mixer(self.mixer(self.stem(x)))
        a, b = self.pair(x)
        b += 1.0  # in place, outside any module
        return self.fc(self.ident(b)), a


class SuffixClash(nn.Module):
    """``conv`` called twice and a child named ``conv_1``: scope names are ambiguous."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.conv_1 = nn.Conv2d(4, 4, 3, padding=1)
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.out(self.conv_1(self.conv(self.conv(x))))


# ----------------------------------------------------------------------------- helpers
def _init(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for item in out:
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


def _hook_outputs(model: nn.Module, x) -> dict[str, np.ndarray]:
    """Each module's real output, last call, first tensor of a tuple (cloned: in-place ops)."""
    seen: dict[str, np.ndarray] = {}

    def hook(name):
        def record(_m, _i, out):
            t = _first_tensor(out)
            if t is not None:
                seen[name] = t.detach().clone().numpy()
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


def _layer_map(proto: onnx.ModelProto) -> dict[str, str]:
    meta = {p.key: p.value for p in proto.metadata_props}
    return json.loads(meta[LAYER_MAP_KEY])


def _run_with(proto: onnx.ModelProto, x: np.ndarray, names) -> dict[str, np.ndarray]:
    model = onnx.shape_inference.infer_shapes(proto)
    have = {o.name for o in model.graph.output}
    for name in names:
        if name not in have:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
            have.add(name)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"input": x})
    return dict(zip([o.name for o in sess.get_outputs()], outs, strict=True))


def _check_map(model: nn.Module, x) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Export, then compare every mapped tensor with the forward-hook output."""
    proto = export_torch(model, x)
    layer_map = _layer_map(proto)
    expected = _hook_outputs(model, x)
    got = _run_with(proto, x.numpy(), [t for t in layer_map.values() if t != "input"])
    got["input"] = x.numpy()
    for qualname, tensor in layer_map.items():
        np.testing.assert_allclose(
            got[tensor], expected[qualname], atol=1e-5, rtol=1e-4,
            err_msg=f"{qualname} -> {tensor}",
        )
    return proto, layer_map


def _producer(proto: onnx.ModelProto, tensor: str) -> str:
    return next(n.op_type for n in proto.graph.node if tensor in n.output)


# ----------------------------------------------------------------------------- tests
MODELS = {
    "resnet": (ResNetLike, (2, 3, 16, 16)),
    "features": (FeaturesNet, (2, 3, 8, 8)),
    "conv1d": (conv1d_net, (2, 2, 32)),
    "conv3d": (conv3d_net, (2, 1, 8, 8, 8)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_module_mapped_to_its_real_output(name):
    factory, shape = MODELS[name]
    model = _init(factory())
    proto, layer_map = _check_map(model, torch.randn(*shape))
    assert set(layer_map) == {q for q, _ in model.named_modules()}
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["onnx_cam.source"] == "torch"
    assert meta["onnx_cam.layout"] == "channels_first"
    assert meta["onnx_cam.torch_version"] == torch.__version__


def test_resnet_layers_map_to_the_right_ops():
    model = _init(ResNetLike())
    proto, lm = _check_map(model, torch.randn(2, 3, 16, 16))
    assert _producer(proto, lm["conv1"]) == "Conv"  # not BatchNormalization (no folding)
    assert _producer(proto, lm["bn1"]) == "BatchNormalization"
    assert _producer(proto, lm["layer1.0.bn2"]) == "BatchNormalization"
    assert _producer(proto, lm["layer4"]) == "Relu"  # the block output: final ReLU
    assert lm["layer4"] == lm["layer4.1"] == lm["layer4.1.relu"]  # relu: its last call
    assert lm["layer4.1.relu"] != lm["layer4.1.bn1"]
    assert lm[""] == "output"


def test_passthrough_modules_take_the_tensor_they_return():
    model = _init(FeaturesNet())
    proto, lm = _check_map(model, torch.randn(2, 3, 8, 8))
    assert lm["features.3"] == lm["features.2"]  # Dropout
    assert lm["features.5"] == lm["features.4"]  # Identity after MaxPool
    assert lm["features"] == lm["features.4"]
    assert lm["head.2"] == lm["head.1"]
    assert _producer(proto, lm["softmax"]) == "Softmax"
    assert _producer(proto, lm["head.0"]) == "Flatten"


def test_repeated_calls_tuple_outputs_and_two_outputs():
    model = _init(CalledTwice())
    x = torch.randn(2, 3, 8, 8)
    proto, lm = _check_map(model, x)
    # the hooks hold the LAST call, so the values match the 2nd mixer call
    assert lm["mixer"] == lm["mixer.relu"] and lm["mixer"].startswith("/mixer/relu_1/")
    assert lm["mixer.conv"].startswith("/mixer/conv_1/")
    assert _producer(proto, lm["pair"]) == "Mul"  # first tuple element, not the mean
    assert "ident" not in lm  # returns `b` after an in-place edit: no safe tensor
    assert [o.name for o in proto.graph.output] == ["output", "output_1"]
    for out in proto.graph.output:
        assert out.type.tensor_type.shape.dim[0].dim_param == "N"


def test_ambiguous_scope_names_are_left_out():
    model = _init(SuffixClash())
    _, lm = _check_map(model, torch.randn(1, 4, 6, 6))
    assert "conv" not in lm and "conv_1" not in lm
    assert "out" in lm


@pytest.mark.parametrize("name", ["resnet", "conv1d", "conv3d"])
def test_dynamic_batch(name):
    factory, shape = MODELS[name]
    model = _init(factory())
    proto = export_torch(model, torch.randn(*shape))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, *shape[1:])
        (y,) = sess.run(None, {"input": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(y, model(x).numpy(), atol=1e-5, rtol=1e-4)


def test_numpy_input_path_and_training_flags(tmp_path):
    model = _init(conv1d_net())
    model.train()
    model[1].eval()  # mixed flags must come back as they were
    path = tmp_path / "m.onnx"
    proto = export_torch(model, np.random.rand(2, 2, 32), str(path), opset=18,
                         input_name="x", output_name="y")
    assert model.training and model[0].training and not model[1].training
    loaded = onnx.load(str(path))
    assert loaded.SerializeToString() == proto.SerializeToString()
    assert [i.name for i in loaded.graph.input] == ["x"]
    assert [o.name for o in loaded.graph.output] == ["y"]
    assert any(o.version == 18 for o in loaded.opset_import if o.domain in ("", "ai.onnx"))
    assert _layer_map(loaded)[""] == "y"


@pytest.mark.filterwarnings("ignore:Exporting to ONNX opset version")
def test_user_errors():
    model = conv1d_net()
    with pytest.raises(ValueError, match="torch.Tensor or numpy"):
        export_torch(model, [[1.0, 2.0]])
    with pytest.raises(ValueError, match="batch-first"):
        export_torch(model, torch.randn(32))
    with pytest.raises(ValueError, match="opset"):
        export_torch(model, torch.randn(1, 2, 32), opset=13)
    with pytest.raises(ValueError, match="nn.Module"):
        export_torch(lambda x: x, torch.randn(1, 2, 32))
    with pytest.raises(RuntimeError, match="example_input"):
        export_torch(model, torch.randn(1, 5, 32))  # wrong channel count
    with pytest.raises(RuntimeError, match="torch.onnx.export"):
        export_torch(model, torch.randn(1, 2, 32), opset=99)


def test_import_does_not_import_torch(tmp_path):
    code = "import sys, onnx_cam.converters; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


# ------------------------------------------------------------------ names checked by value
class KeepsAMap(nn.Module):
    """Returns its conv's output, but its last node computes a same-shaped tensor it keeps for
    the caller (as attention blocks keep their maps): the scope's last node is not its output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        self.kept = torch.sigmoid(y)
        return y


class KeepsAMapNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = KeepsAMap()
        self.relu = nn.ReLU()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = self.relu(self.block(x)) * self.block.kept
        return self.head(h.mean((2, 3)))


def conv_bn_relu_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6),
                         nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 3))


def _unverified(proto: onnx.ModelProto) -> dict[str, str]:
    meta = {p.key: p.value for p in proto.metadata_props}
    return json.loads(meta["onnx_cam.unverified_layers"])


def test_conv_bn_relu_names_are_their_modules_outputs():
    """Each BatchNorm name is BN's own output as its forward hook saw it when it returned,
    before the in-place ReLU after it."""
    model = _init(conv_bn_relu_net())
    proto, layer_map = _check_map(model, torch.randn(2, 3, 8, 8))
    assert set(layer_map) == {q for q, _ in model.named_modules()}
    assert _producer(proto, layer_map["1"]) == "BatchNormalization"
    assert _unverified(proto) == {}


def test_batchnorm_folded_into_its_conv_is_never_offered(monkeypatch):
    """An export that folds each BatchNorm into the Conv before it (constant folding) leaves
    the Conv's node holding BN's output: the Conv names would lie and are left out."""
    from onnx_cam.converters import torch_export

    def folding_export(module, xs, opset, outputs):
        buffer = io.BytesIO()
        torch.onnx.export(module, tuple(xs.values()), buffer, dynamo=False,
                          do_constant_folding=True, opset_version=opset, input_names=list(xs),
                          output_names=outputs,
                          dynamic_axes={name: {0: "N"} for name in [*xs, *outputs]})
        return onnx.load_from_string(buffer.getvalue())

    monkeypatch.setattr(torch_export, "_export", folding_export)
    model = _init(conv_bn_relu_net())
    proto, layer_map = _check_map(model, torch.randn(2, 3, 8, 8))  # every name offered is true
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}
    assert {"0", "4"}.isdisjoint(layer_map) and {"2", "6"} <= set(layer_map)
    assert _unverified(proto) == {"0": "2", "4": "3"}  # the nearest kept, in call order


def test_a_name_whose_tensor_is_not_the_output_is_left_out_and_explained():
    """The module's scope ends in a node that is not its output; the name is left out, and
    asking for it raises a LayerError naming the module that holds the same values."""
    import onnx_cam
    from onnx_cam.errors import LayerError

    torch.manual_seed(0)
    model = KeepsAMapNet().eval()
    x = torch.randn(2, 3, 8, 8)
    proto, layer_map = _check_map(model, x)
    assert "block" not in layer_map and "block.conv" in layer_map
    assert _unverified(proto) == {"block": "block.conv"}
    explainer = onnx_cam.Explainer(proto.SerializeToString())
    with pytest.raises(LayerError, match="nearest module that is: 'block.conv'"):
        explainer.explain(x.numpy(), targets=0, layers="block")
