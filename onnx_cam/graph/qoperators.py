"""Rewrite a QOperator-format model (QLinearConv, QGemm, QLinearAdd, ... and the plain ops it
runs on int8 tensors, e.g. MaxPool) into QDQ form: DequantizeLinear -> float op ->
QuantizeLinear, with the same scales and zero points.

The QDQ form computes the same values (ONNX Runtime's QDQ fusion turns each group back into
its integer kernel when nothing else reads the float op's output), and the gradient rules of
rules/quantize.py differentiate it. Integer ops of dynamic quantisation (ConvInteger,
MatMulInteger, DynamicQuantizeLinear) have rules of their own and are left as they are.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import UnsupportedModelError

MS = "com.microsoft"
# op -> (float op, positions of the (x, scale, zero point) input triples, positions of the
# output (scale, zero point) or None for a float output)
_QLINEAR = {
    ("", "QLinearConv"): ("Conv", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    ("", "QLinearMatMul"): ("MatMul", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    (MS, "QGemm"): ("Gemm", [(0, 1, 2), (3, 4, 5)], (7, 8)),
    (MS, "QLinearAdd"): ("Add", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    (MS, "QLinearMul"): ("Mul", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    (MS, "QLinearGlobalAveragePool"): ("GlobalAveragePool", [(0, 1, 2)], (3, 4)),
    (MS, "QLinearAveragePool"): ("AveragePool", [(0, 1, 2)], (3, 4)),
    (MS, "QLinearLeakyRelu"): ("LeakyRelu", [(0, 1, 2)], (3, 4)),
    (MS, "QLinearSigmoid"): ("Sigmoid", [(0, 1, 2)], (3, 4)),
    (MS, "QLinearSoftmax"): ("Softmax", [(0, 1, 2)], (3, 4)),
}
_QOPERATORS = {*_QLINEAR, (MS, "QLinearConcat")}
# ops that move or select int8 values without arithmetic: their output keeps the input's
# scale and zero point (the QOperator format runs them on the integers)
_SAME_SCALE = frozenset({
    "MaxPool", "GlobalMaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
    "Identity", "Slice", "Split", "Gather", "Expand", "Tile", "DepthToSpace",
    "SpaceToDepth", "Resize", "Pad", "ReduceMax", "ReduceMin", "Concat",
})
# ops that may read int8 tensors as they are
_READS_INTEGERS = frozenset({"DequantizeLinear", "Shape", "Size"})
# attributes of the QLinear op that its float op does not take
_DROPPED = {"channels_last", "opset"}


def qdq_model(proto: onnx.ModelProto) -> onnx.ModelProto:
    """`proto` itself when it has no QOperator node, else its QDQ rewrite (a new model)."""
    if not any((n.domain, n.op_type) in _QOPERATORS for n in proto.graph.node):
        return proto
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    _Rewrite(model.graph).run()
    return model


class _Rewrite:
    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.constants = {i.name: i for i in graph.initializer}
        self.names = {v for n in graph.node for v in [*n.input, *n.output]}
        self.names |= set(self.constants) | {i.name for i in graph.input}
        self.quantized: dict[str, tuple[str, str]] = {}  # int8 tensor -> (scale, zero point)
        self.dequantized: dict[str, str] = {}            # int8 tensor -> its float tensor
        self.nodes: list[onnx.NodeProto] = []

    def run(self) -> None:
        for node in [_copy(n) for n in self.graph.node]:
            key = (node.domain, node.op_type)
            if key in _QLINEAR:
                self._qlinear(node, *_QLINEAR[key])
            elif key == (MS, "QLinearConcat"):  # Y_scale, Y_zero_point, then (x, scale, zp)...
                triples = [(i, i + 1, i + 2) for i in range(2, len(node.input), 3)]
                self._qlinear(node, "Concat", triples, (0, 1))
            elif node.op_type == "QuantizeLinear":
                self.quantized[node.output[0]] = (node.input[1], _at(node.input, 2))
                self.nodes.append(node)
            elif node.op_type in _SAME_SCALE and node.input and node.input[0] in self.quantized:
                self._same_scale(node)
            elif (node.domain == MS and node.op_type.startswith("Q")) or (
                    node.op_type not in _READS_INTEGERS
                    and any(name in self.quantized for name in node.input)):
                raise UnsupportedModelError(
                    f"Node {node.name!r} ({node.op_type}) computes on int8 tensors in a way "
                    "onnx-cam cannot express in float yet. Quantise the model in QDQ format "
                    "(quantize_static(..., quant_format=QuantFormat.QDQ)), or leave this node "
                    "unquantised (nodes_to_exclude=[...]).")
            else:
                self.nodes.append(node)
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)

    # ---- helpers ------------------------------------------------------------------------
    def _fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def _float_output(self, int_name: str) -> str:
        """A name for the float tensor an op computes before it is quantised to `int_name`:
        the unquantised model's name where the QOperator model does not use it."""
        name = _float_name(int_name)
        return self._fresh(name if name not in self.names else f"{name}/float")

    def _value(self, name: str, what: str, node) -> np.ndarray:
        if name not in self.constants:
            raise UnsupportedModelError(
                f"The {what} of {node.op_type} node {node.name!r} is computed at run time; "
                "onnx-cam rewrites QOperator nodes whose scales and zero points are stored in "
                "the model. Quantise the model in QDQ format instead.")
        return numpy_helper.to_array(self.constants[name])

    def _add_constant(self, base: str, values: np.ndarray) -> str:
        name = self._fresh(base)
        self.graph.initializer.append(numpy_helper.from_array(values, name))
        self.constants[name] = self.graph.initializer[-1]
        return name

    def _dequantize(self, name: str, scale: str, zero_point: str, axis: int | None) -> str:
        """The float tensor of int8 tensor `name` (one DequantizeLinear per tensor)."""
        if name not in self.dequantized:
            out = self._fresh(f"{_float_name(name)}_dequantized")
            attrs = {} if axis is None else {"axis": axis}
            self.nodes.append(helper.make_node("DequantizeLinear", [name, scale, zero_point],
                                               [out], self._fresh(f"{out}/DequantizeLinear"),
                                               **attrs))
            self.dequantized[name] = out
        return self.dequantized[name]

    def _requantize(self, float_name: str, int_name: str, scale: str, zero_point: str) -> None:
        self.nodes.append(helper.make_node("QuantizeLinear", [float_name, scale, zero_point],
                                           [int_name], self._fresh(f"{int_name}/QuantizeLinear")))
        self.quantized[int_name] = (scale, zero_point)

    # ---- rewrites -----------------------------------------------------------------------
    def _qlinear(self, node, op: str, triples, output) -> None:
        inputs = []
        for position, (x, scale, zp) in enumerate(triples):
            axis = self._weight_axis(node, op, position, node.input[scale])
            inputs.append(self._dequantize(node.input[x], node.input[scale],
                                           _at(node.input, zp), axis))
        if op == "Conv" and _at(node.input, 8):
            inputs.append(self._bias(node, node.input[8], node.input[1], node.input[4], 0))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute
                 if a.name not in _DROPPED}
        if op == "Gemm":
            if attrs.get("alpha", 1.0) != 1.0:
                raise UnsupportedModelError(
                    f"QGemm node {node.name!r} has alpha {attrs['alpha']}; onnx-cam rewrites "
                    "QGemm with alpha 1 only. Quantise the model in QDQ format instead.")
            if _at(node.input, 6):
                inputs.append(self._bias(node, node.input[6], node.input[1], node.input[4],
                                         0 if attrs.get("transB", 0) else 1))
        if any(helper.get_attribute_value(a) for a in node.attribute
               if a.name == "channels_last"):
            raise UnsupportedModelError(
                f"{node.op_type} node {node.name!r} works channels-last, which onnx-cam does "
                "not rewrite. Quantise the model in QDQ format instead.")
        result = node.output[0]
        scale, zero_point = (_at(node.input, output[0]), _at(node.input, output[1]))
        float_out = result if not scale else self._float_output(result)
        self.nodes.append(helper.make_node(op, inputs, [float_out], node.name, **attrs))
        if scale:
            self._requantize(float_out, result, scale, zero_point)

    def _weight_axis(self, node, op: str, position: int, scale: str) -> int | None:
        """The axis of a per-channel weight scale (the second operand's)."""
        if position != 1 or self._value(scale, "scale", node).size <= 1:
            return None
        if op == "Conv":
            return 0
        if op == "Gemm":
            transposed = any(a.name == "transB" and a.i for a in node.attribute)
            return 0 if transposed else 1
        return -1  # MatMul: per column of the right operand

    def _bias(self, node, bias: str, x_scale: str, w_scale: str, axis: int) -> str:
        """The int32 bias dequantised with scale x_scale * w_scale (zero point 0)."""
        scale = (self._value(x_scale, "input scale", node).astype(np.float32)
                 * self._value(w_scale, "weight scale", node).astype(np.float32))
        scale_name = self._add_constant(f"{bias}_scale", scale.reshape(-1) if scale.size > 1
                                        else scale.reshape(()))
        zero = np.zeros(scale.shape if scale.size > 1 else (), np.int32)
        zero_name = self._add_constant(f"{bias}_zero_point", zero.reshape(-1) if scale.size > 1
                                       else zero)
        return self._dequantize(bias, scale_name, zero_name, 0 if scale.size > 1 else None)

    def _same_scale(self, node) -> None:
        scale, zero_point = self.quantized[node.input[0]]
        inputs = list(node.input)
        for i, name in enumerate(inputs):
            if name in self.quantized:
                if self.quantized[name] != (scale, zero_point):
                    raise UnsupportedModelError(
                        f"{node.op_type} node {node.name!r} joins int8 tensors of different "
                        "scales. Quantise the model in QDQ format instead.")
                inputs[i] = self._dequantize(name, scale, zero_point, None)
            elif node.op_type == "Pad" and i == 2 and name:  # the pad value, an int8 constant
                inputs[i] = self._dequantize(name, scale, zero_point, None)
        if node.op_type == "Pad" and not _at(inputs, 2) and _constant_mode(node):
            # the default pad value is integer 0, which is not float 0 unless zero_point is 0
            zero = np.zeros((), self._value(zero_point, "zero point", node).dtype)
            inputs = (inputs + [""])[:2] + [self._dequantize(
                self._add_constant(f"{node.name}_pad_value", zero), scale, zero_point, None)]
        outputs = [self._float_output(out) if out else "" for out in node.output]
        copy = helper.make_node(node.op_type, inputs, outputs, node.name, domain=node.domain)
        copy.attribute.extend(node.attribute)
        self.nodes.append(copy)
        for float_name, int_name in zip(outputs, node.output):
            if int_name:
                self._requantize(float_name, int_name, scale, zero_point)


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def _constant_mode(node) -> bool:
    mode = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "mode"),
                b"constant")
    return mode in (b"constant", "constant")


def _at(names, i: int) -> str:
    return names[i] if i < len(names) else ""


def _float_name(int_name: str) -> str:
    """The float tensor an int8 tensor holds, named as the unquantised model named it."""
    return int_name[:-len("_quantized")] if int_name.endswith("_quantized") else int_name
