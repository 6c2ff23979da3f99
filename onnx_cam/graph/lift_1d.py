"""Run a 1D convolutional graph as a 2D one of height 1, for ONNX Runtime's CPU speed.

ONNX Runtime's blocked-layout (NCHWc) convolution and pooling kernels are 2D only; a 1D
network run with a unit height axis takes about two thirds of its 1D time. `lift_1d` finds the
connected regions of convolutions, pools and the per-element ops around them whose tensors are
(N, C, L) and rewrites them on (N, C, 1, L): every attribute gains a leading entry for the unit
axis, every operand entering a region is unsqueezed before its last axis (which keeps numpy
broadcasting as it was), and every tensor leaving one is squeezed back under its own name. The
graph's inputs and outputs keep their shapes, so nothing outside the session sees the change.
A region node computes exactly what it did (a unit axis adds no terms to any sum), so this is
a layout choice, not an approximation; ops not listed here are left as they are.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

# ops whose kernels want a 2D layout; a region grows from these
_SPATIAL = {"Conv", "ConvTranspose", "MaxPool", "AveragePool"}
# (N, C, L) in, same-rank out; operands broadcast numpy-style
_ELEMENTWISE = {
    "Abs", "Add", "And", "BatchNormalization", "Cast", "Ceil", "Clip", "Div", "Elu", "Equal",
    "Erf", "Exp", "Floor", "Gelu", "GlobalAveragePool", "GlobalMaxPool", "Greater",
    "GreaterOrEqual", "HardSigmoid", "HardSwish", "Identity", "InstanceNormalization",
    "LeakyRelu", "Less", "LessOrEqual", "Log", "Max", "Mean", "Min", "Mish", "Mul", "Neg",
    "Not", "Or", "PRelu", "Pow", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign",
    "Softplus", "Sqrt", "Sub", "Sum", "Tanh", "Where", "Xor",
    "QuantizeLinear", "DequantizeLinear", "Concat",
}
_PER_AXIS = ("kernel_shape", "strides", "dilations", "output_padding", "output_shape")
_SUFFIX = "/2d"


def lift_1d(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its 1D convolutional regions run at height 1 (the same model when it has
    none, or when its shapes cannot be inferred)."""
    graph = model.graph
    if not _may_be_1d(graph) or _has_subgraphs(graph):
        return model
    ranks = _ranks(model)
    if ranks is None:
        return model
    region = _region(graph, ranks)
    if not region:
        return model
    return _rewrite(model, region, ranks)


def _may_be_1d(graph) -> bool:
    """Whether a convolution or pool may be 1D, read from attributes and weights alone: shape
    inference of a large graph (unrolled loops) costs seconds."""
    weights = {t.name: len(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type not in _SPATIAL:
            continue
        kernel = _attr(node, "kernel_shape")
        if kernel is not None:
            if len(kernel) == 1:
                return True
        elif weights.get(node.input[1], 3) == 3:  # no attribute: the weights' rank, if known
            return True
    return False


def _has_subgraphs(graph) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for n in graph.node for a in n.attribute)


def _ranks(model) -> dict[str, int] | None:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - an unknown op or a > 2 GB model: leave the graph as it is
        return None
    g = inferred.graph
    ranks = {t.name: len(t.dims) for t in g.initializer}
    for info in (*g.input, *g.value_info, *g.output):
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            ranks[info.name] = len(tensor.shape.dim)
    return ranks


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _liftable(node, ranks) -> bool:
    if node.domain not in ("", "ai.onnx"):
        return False
    inputs = [t for t in node.input if t]
    if any(t not in ranks for t in inputs) or any(t and t not in ranks for t in node.output):
        return False
    if node.op_type in _SPATIAL:
        return ranks[node.input[0]] == 3 and _attr(node, "storage_order", 0) == 0 \
            and len([t for t in node.output if t]) <= 2
    if node.op_type not in _ELEMENTWISE:
        return False
    if node.op_type == "BatchNormalization" and len([t for t in node.output if t]) > 1:
        return False  # training mode: running statistics out
    return all(ranks[t] == 3 for t in node.output if t) and all(ranks[t] <= 3 for t in inputs)


def _region(graph, ranks) -> set[int]:
    """Indices of the nodes to lift: the liftable nodes connected through (N, C, L) tensors to a
    1D convolution or pool."""
    producer, consumers = {}, {}
    for i, node in enumerate(graph.node):
        for t in node.output:
            producer[t] = i
        for t in node.input:
            consumers.setdefault(t, []).append(i)
    liftable = {i for i, n in enumerate(graph.node) if _liftable(n, ranks)}
    region = {i for i in liftable if graph.node[i].op_type in _SPATIAL}
    todo = list(region)
    while todo:
        node = graph.node[todo.pop()]
        for t in (*node.input, *node.output):
            if not t or ranks.get(t) != 3:
                continue
            for j in (producer.get(t), *consumers.get(t, ())):
                if j is not None and j in liftable and j not in region:
                    region.add(j)
                    todo.append(j)
    return region


def _rewrite(model, region, ranks) -> onnx.ModelProto:
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    lifted = {t for i in region for t in graph.node[i].output if t}
    used_outside = {t for i, n in enumerate(graph.node) if i not in region for t in n.input}
    used_outside |= {o.name for o in graph.output}
    axes_inits, unsqueezed, nodes = {}, {}, []

    def axes(value):
        name = f"onnx_cam/lift_1d/axes_{value}"
        if name not in axes_inits:
            axes_inits[name] = numpy_helper.from_array(np.array([value], np.int64), name)
        return name

    def reshape_node(op, source, target, axis):
        if opset >= 13:
            return helper.make_node(op, [source, axes(axis)], [target], name=target)
        return helper.make_node(op, [source], [target], name=target, axes=[axis])

    def lifted_input(t):
        if not t:
            return t
        if t in lifted:
            return t + _SUFFIX
        if ranks[t] < 2:
            return t  # a scalar or a per-L vector broadcasts onto (N, C, 1, L) as before
        if t not in unsqueezed:
            unsqueezed[t] = t + _SUFFIX
            nodes.append(reshape_node("Unsqueeze", t, unsqueezed[t], ranks[t] - 1))
        return unsqueezed[t]

    for i, node in enumerate(graph.node):
        if i not in region:
            nodes.append(node)
            continue
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.ClearField("input")
        new.input.extend(lifted_input(t) for t in node.input)
        new.ClearField("output")
        new.output.extend(t + _SUFFIX if t else t for t in node.output)
        _lift_attributes(new)
        nodes.append(new)
        for t in node.output:
            if t and t in used_outside:
                nodes.append(reshape_node("Squeeze", t + _SUFFIX, t, 2))

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    g.ClearField("node")
    g.node.extend(nodes)
    g.initializer.extend(axes_inits.values())
    present = {t for n in nodes for t in n.output} | {i.name for i in g.input}
    kept = [v for v in g.value_info if v.name in present]
    g.ClearField("value_info")
    g.value_info.extend(kept)
    return out


def _lift_attributes(node) -> None:
    for a in node.attribute:
        if a.name in _PER_AXIS:
            values = list(a.ints)
            a.ClearField("ints")
            a.ints.extend([1 if a.name != "output_padding" else 0, *values])
        elif a.name == "pads":
            values = list(a.ints)
            half = len(values) // 2
            a.ClearField("ints")
            a.ints.extend([0, *values[:half], 0, *values[half:]])
        elif a.name == "axis" and node.op_type in ("Concat", "QuantizeLinear",
                                                    "DequantizeLinear"):
            axis = a.i % 3
            a.i = axis if axis < 2 else axis + 1
