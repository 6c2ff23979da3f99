"""Quantised models: int8 QDQ, QOperator and dynamic quantisation, as ONNX Runtime's quantiser
writes them, and torch fake quantisation exported to QDQ.

References: torch autograd of a model with torch.fake_quantize_per_tensor_affine /
fake_quantize_per_channel_affine (the gradient quantisation-aware training defines: straight
through inside the range, zero where it saturates), to 1e-4; the float32 export's maps
(correlation >= 0.9); the QOperator file's own ONNX Runtime output (the QDQ rewrite must give
the same integers).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from onnxruntime.quantization import (  # noqa: E402
    CalibrationDataReader,
    QuantFormat,
    quantize_dynamic,
    quantize_static,
)
from torch import nn  # noqa: E402
from torch_zoo import Net, randomize, reference  # noqa: E402

import onnx_cam  # noqa: E402
from onnx_cam.converters import export_torch  # noqa: E402
from onnx_cam.errors import LayerError, UnsupportedModelError  # noqa: E402
from onnx_cam.graph.precision import is_float  # noqa: E402
from onnx_cam.graph.qoperators import qdq_model  # noqa: E402


# ------------------------------------------------------------------ torch fake quantisation
class FakeQuant(nn.Module):
    """torch's fake quantisation, per tensor or per channel (axis); exported as Q -> DQ."""

    def __init__(self, scale, zero_point, qmin: int, qmax: int, axis: int | None = None):
        super().__init__()
        self.scale, self.zero_point, self.range, self.axis = scale, zero_point, (qmin, qmax), axis
        self.saturated = 0  # inputs outside the range in the last call

    def forward(self, x):
        if self.axis is None:
            q = torch.round(x / self.scale) + self.zero_point
            out = torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point,
                                                        *self.range)
        else:
            shape = [1] * x.dim()
            shape[self.axis] = -1
            scale = torch.tensor(self.scale, dtype=torch.float32)
            zero_point = torch.tensor(self.zero_point, dtype=torch.int32)
            q = torch.round(x / scale.view(shape)) + zero_point.view(shape)
            out = torch.fake_quantize_per_channel_affine(x, scale, zero_point, self.axis,
                                                         *self.range)
        self.saturated = int(((q < self.range[0]) | (q > self.range[1])).sum())
        return out


class QConv(nn.Module):
    """A convolution with per-channel symmetric int8 fake-quantised weights, as in QAT."""

    def __init__(self, dim: int, cin: int, cout: int):
        super().__init__()
        self.conv = {1: nn.Conv1d, 2: nn.Conv2d}[dim](cin, cout, 3, padding=1, bias=False)
        self.weight_quant = FakeQuant([2.0 ** -7] * cout, [0] * cout, -128, 127, axis=0)

    def forward(self, x):
        return self.conv._conv_forward(x, self.weight_quant(self.conv.weight), None)


def fake_quantized(dim: int) -> nn.Sequential:
    # power-of-two scales: x / s is exact, so torch and ONNX Runtime round the same values
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}[dim]
    return nn.Sequential(
        FakeQuant(2 ** -6, 128, 0, 255),                               # 0: uint8, asymmetric
        QConv(dim, 3, 8), FakeQuant(2 ** -8, 100, 0, 255), nn.ReLU(),  # 1, 2, 3
        QConv(dim, 8, 6),                                              # 4
        FakeQuant([2.0 ** -k for k in (10, 9, 8, 8, 7, 9)], [0] * 6, -128, 127, axis=1),  # 5
        nn.LeakyReLU(0.1), pool(1), nn.Flatten(), nn.Linear(6, 4),
        FakeQuant(2 ** -7, 0, -128, 127))                              # 10: int8, symmetric


@pytest.mark.parametrize("dim, shape", [(2, (5, 3, 12, 12)), (1, (5, 3, 40))])
def test_fake_quantisation_gradients_equal_torch_autograd(dim, shape):
    torch.manual_seed(dim)
    net = randomize(Net(fake_quantized(dim)), dim)
    x = np.random.default_rng(dim).random(shape).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exp = onnx_cam.Explainer(export_torch(net, x))
    layers = ["body.2", "body.3", "body.5"]
    logits_ref, _, ref = reference(net, x, layers)
    for index in (2, 5):  # the range matters: some inputs saturate
        assert net.body[index].saturated > 0
    logits, got = exp.activations_and_gradients(x, layers=layers)
    np.testing.assert_allclose(logits, logits_ref, atol=1e-6)
    with pytest.raises(LayerError, match="'body.4'.*quantised.*'body.5'"):
        exp.explain(x, layers="body.4")  # the convolution's float output, quantised by body.5
    for layer in layers:
        for what, ours, theirs in zip(("activation", "gradient"), got[layer], ref[layer]):
            err = np.abs(ours - theirs).max() / np.abs(theirs).max()
            assert err <= 1e-4, f"{layer} {what}: relative error {err:.2e}"


# ------------------------------------------------------------- ONNX Runtime's quantiser
class Block(nn.Module):
    """Conv, BN, ReLU, MaxPool, a residual Add, a Concat, SiLU (Sigmoid * x), LeakyReLU,
    AveragePool, global pooling and a linear head: the ops the quantiser turns into QLinear*."""

    def __init__(self, dim: int):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d}[dim]
        self.stem = nn.Sequential(conv(3, 8, 3, padding=1), {1: nn.BatchNorm1d,
                                  2: nn.BatchNorm2d}[dim](8), nn.ReLU(),
                                  {1: nn.MaxPool1d, 2: nn.MaxPool2d}[dim](2))
        self.branch = conv(8, 8, 3, padding=1)
        self.side = conv(8, 4, 1)
        self.act = nn.LeakyReLU(0.1)
        self.pool = {1: nn.AvgPool1d, 2: nn.AvgPool2d}[dim](2)
        self.head = nn.Sequential({1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}[dim](1),
                                  nn.Flatten(), nn.Linear(12, 5))

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.branch(x) + x)
        x = torch.cat([x, self.side(x)], dim=1)
        x = self.pool(self.act(x * torch.sigmoid(x)))
        return self.head(x)


SHAPES = {1: (1, 3, 64), 2: (1, 3, 24, 24)}


class Calibration(CalibrationDataReader):
    """Wider than the test inputs: beyond the calibrated range the gradient is zero."""

    def __init__(self, shape):
        rng = np.random.default_rng(7)
        self.items = iter([{"input": 1.5 * rng.standard_normal(shape).astype(np.float32)}
                           for _ in range(16)])

    def get_next(self):
        return next(self.items, None)


def float_model(dim: int, tmp_path) -> str:
    torch.manual_seed(dim)
    net = Block(dim).eval()
    with torch.no_grad():
        net.stem[1].running_mean.uniform_(-0.2, 0.2)
        net.stem[1].running_var.uniform_(0.5, 1.5)
    path = str(tmp_path / f"float{dim}.onnx")
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(*SHAPES[dim]),), buffer, dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})
    onnx.save(onnx.load_from_string(buffer.getvalue()), path)
    return path


def quantised(path: str, form: str, per_channel: bool, symmetric: bool, shape) -> str:
    out = path.replace(".onnx", f"_{form}_{per_channel}_{symmetric}.onnx")
    if form == "dynamic":
        quantize_dynamic(path, out)
    else:
        quantize_static(path, out, Calibration(shape), quant_format=getattr(QuantFormat, form),
                        per_channel=per_channel,
                        extra_options={"ActivationSymmetric": symmetric,
                                       "WeightSymmetric": symmetric})
    return out


FORMS = [(form, pc, sym) for form in ("QDQ", "QOperator") for pc in (False, True)
         for sym in (False, True)] + [("dynamic", False, False)]


@pytest.fixture(scope="module")
def float_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quantised")
    return {dim: float_model(dim, folder) for dim in (1, 2)}


def _correlation(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("dim", [1, 2])
def test_quantised_forms_explain_like_the_float_model(float_models, dim):
    path = float_models[dim]
    x = np.random.default_rng(dim).standard_normal((6, *SHAPES[dim][1:])).astype(np.float32)
    plain = onnx_cam.Explainer(path)
    layer = plain.layers[0]  # the deepest; every form keeps its name
    reference = plain.explain(x, layers=layer)
    targets = reference.targets  # near-tied random logits may rank otherwise in int8
    for form, per_channel, symmetric in FORMS:
        name = f"{form} per_channel={per_channel} symmetric={symmetric}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            file = quantised(path, form, per_channel, symmetric, SHAPES[dim])
        exp = onnx_cam.Explainer(file)
        # layers are float tensors (dequantised), never the int8 ones
        graph = exp.model.graph(exp.model.default_spatial_shape())
        tensors = graph.tensors()
        assert exp.layers and all(is_float(tensors[layer.tensor].dtype)
                                  for layer in exp.layer_info), name
        got = exp.explain(x, targets, layers=layer).cam()
        corr = _correlation(got, reference.cam())
        assert corr >= 0.9, f"{name}: Grad-CAM correlation {corr:.3f} with the float model"


@pytest.mark.parametrize("dim", [1, 2])
def test_qoperator_rewrite_computes_what_the_file_computes(float_models, dim):
    x = np.random.default_rng(dim).standard_normal((8, *SHAPES[dim][1:])).astype(np.float32)
    for per_channel, symmetric in ((False, False), (True, True)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            file = quantised(float_models[dim], "QOperator", per_channel, symmetric,
                             SHAPES[dim])
        original = onnx.load(file)
        ops = {n.op_type for n in original.graph.node}
        assert {"QLinearConv", "QLinearAdd", "QLinearConcat", "QGemm"} <= ops
        rewritten = qdq_model(original)
        assert not {n.op_type for n in rewritten.graph.node} & {"QLinearConv", "QGemm"}
        outputs = [ort.InferenceSession(m.SerializeToString(),
                                        providers=["CPUExecutionProvider"]).run(None,
                                                                                {"input": x})[0]
                   for m in (original, rewritten)]
        np.testing.assert_array_equal(outputs[1], outputs[0])


def test_quantised_op_without_float_form_is_refused_by_name():
    from onnx import TensorProto, helper
    init = [helper.make_tensor(n, TensorProto.FLOAT, [], [0.1]) for n in ("s", "s2")]
    init += [helper.make_tensor(n, TensorProto.UINT8, [], [0]) for n in ("z", "z2")]
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 3], np.ones(6).tolist())
    graph = helper.make_graph([
        helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1]),
        helper.make_node("QuantizeLinear", ["c", "s", "z"], ["q"]),
        helper.make_node("QLinearReduceMean", ["q", "s", "z", "s2", "z2"], ["r"], axes=[2],
                         keepdims=1, domain="com.microsoft", name="mean"),
        helper.make_node("QLinearConv", ["r", "s", "z", "wq", "s", "z", "s2", "z2"], ["y"]),
    ], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 2, 1])],
        init + [w, helper.make_tensor("wq", TensorProto.UINT8, [2, 2, 1], [1, 1, 1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    with pytest.raises(UnsupportedModelError, match=r"'mean' \(QLinearReduceMean\).*QDQ"):
        onnx_cam.Explainer(model)
