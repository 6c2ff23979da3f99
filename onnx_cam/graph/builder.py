"""Emit the nodes of the gradient subgraph into an onnx-graphsurgeon graph."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

from .precision import float32_view, is_half

Tensor = gs.Variable | gs.Constant


def static_shape(tensor: Tensor) -> list:
    """The inferred shape: ints for static axes, a str or None for dynamic ones."""
    if tensor.shape is None:
        raise ValueError(f"tensor {tensor.name!r} has no inferred shape")
    return list(tensor.shape)


def rank(tensor: Tensor) -> int:
    return len(static_shape(tensor))


def spatial_dims(tensor: Tensor) -> list[int]:
    """Static sizes of the axes after (N, C); every one must be known."""
    dims = static_shape(tensor)[2:]
    if not all(isinstance(d, int) for d in dims):
        raise ValueError(f"tensor {tensor.name!r} has dynamic spatial axes {dims}")
    return dims


def _dequantized_constant(tensor: Tensor) -> np.ndarray | None:
    """The float32 values of a DequantizeLinear output whose inputs are all constants."""
    if not isinstance(tensor, gs.Variable) or len(tensor.inputs) != 1:
        return None
    node = tensor.inputs[0]
    if node.op != "DequantizeLinear" or node.attrs.get("block_size", 0) or not all(
            isinstance(t, gs.Constant) for t in node.inputs if t.name):
        return None
    x, scale = (np.asarray(t.values) for t in node.inputs[:2])
    zero_point = (np.asarray(node.inputs[2].values) if len(node.inputs) > 2
                  and node.inputs[2].name else np.zeros((), x.dtype))
    if scale.size > 1:  # per axis
        shape = [1] * x.ndim
        shape[node.attrs.get("axis", 1) % x.ndim] = scale.size
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    shifted = x.astype(np.int64) - zero_point.astype(np.int64)
    return (shifted.astype(np.float32) * scale.astype(np.float32)).astype(np.float32)


class GradBuilder:
    """Appends gradient nodes to a graph; every helper returns the new output tensor."""

    def __init__(self, graph: gs.Graph, opset: int):
        self.graph = graph
        self.opset = opset
        self._count = 0
        self._shapes: dict[str, gs.Variable] = {}
        self._float32: dict[str, Tensor] = {}

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"onnx_cam/grad/{hint}_{self._count}"

    def const(self, value, dtype=np.float32) -> gs.Constant:
        return gs.Constant(self._name("const"), np.asarray(value, dtype=dtype))

    def ints(self, values: Sequence[int]) -> gs.Constant:
        return self.const(np.asarray(values, dtype=np.int64).reshape(-1), np.int64)

    def op(self, op: str, inputs: Sequence, attrs: dict | None = None, *, outputs: int = 1,
           dtype=np.float32):
        """Add one node; numpy arrays and Python numbers among `inputs` become constants, and
        16-bit float tensors are read as float32 (see float32)."""
        ins = []
        for value in inputs:
            if value is None:
                ins.append(gs.Variable.empty())
            elif isinstance(value, (gs.Variable, gs.Constant)):
                ins.append(value if op in ("Shape", "Size") else self.float32(value))
            else:
                ins.append(self.const(value))
        outs = [gs.Variable(self._name(op), dtype=dtype) for _ in range(outputs)]
        self.graph.nodes.append(gs.Node(op, self._name(op), attrs or {}, ins, outs))
        return outs[0] if outputs == 1 else outs

    def float32(self, tensor: Tensor) -> Tensor:
        """`tensor` as the gradient subgraph reads it: a float16 / bfloat16 tensor of the forward
        graph as a float32 copy (a constant converted once here, an activation cast at run
        time, once per tensor), so the gradients are computed and accumulated in float32;
        a quantised model's dequantised weights as a float32 constant; any other tensor as
        it is."""
        weights = _dequantized_constant(tensor)
        if weights is None and not is_half(tensor.dtype):
            return tensor
        if tensor.name not in self._float32:
            if weights is not None:
                wide = self.const(weights)
            elif isinstance(tensor, gs.Constant):
                values = onnx.numpy_helper.to_array(OnnxExporter.export_tensor_proto(tensor))
                wide = self.const(values.astype(np.float32))
            else:
                wide = float32_view(self.graph, tensor, self._name("float32"))
            self._float32[tensor.name] = wide
        return self._float32[tensor.name]

    # ---- shapes ------------------------------------------------------------------------
    def forget_shapes(self) -> None:
        """Drop the cached Shape nodes' tensors (after moving to a re-imported graph)."""
        self._shapes.clear()

    def shape_of(self, tensor: Tensor) -> gs.Variable:
        if tensor.name not in self._shapes:
            self._shapes[tensor.name] = self.op("Shape", [tensor], dtype=np.int64)
        return self._shapes[tensor.name]

    def reshape_like(self, grad: Tensor, like: Tensor) -> gs.Variable:
        return self.op("Reshape", [grad, self.shape_of(like)])

    def zeros_like(self, like: Tensor) -> gs.Variable:
        zero = gs.Constant(self._name("zero"), np.zeros(1, np.float32))
        return self.op("ConstantOfShape", [self.shape_of(like)], {"value": zero})

    def reduce_sum(self, grad: Tensor, axes: Sequence[int], keepdims: bool = True):
        return self.op("ReduceSum", [grad, self.ints(axes)], {"keepdims": int(keepdims)})

    def reduce_mean(self, t: Tensor, axes: Sequence[int]):
        """Mean over `axes`, kept as size-1 axes; no static size needed (axes may be dynamic)."""
        if self.opset >= 18:
            return self.op("ReduceMean", [t, self.ints(axes)], {"keepdims": 1})
        return self.op("ReduceMean", [t], {"axes": list(axes), "keepdims": 1})

    def unbroadcast(self, grad: Tensor, out: Tensor, target: Tensor) -> Tensor:
        """Sum `grad` (shaped like `out`) over the axes along which `target` was broadcast."""
        out_shape, tgt_shape = static_shape(out), static_shape(target)
        lead = len(out_shape) - len(tgt_shape)
        axes = list(range(lead))
        for i, d in enumerate(tgt_shape):
            if d == 1 and out_shape[lead + i] != 1:
                axes.append(lead + i)
        if axes:
            grad = self.reduce_sum(grad, axes, keepdims=True)
        if lead:
            grad = self.reshape_like(grad, target)
        return grad

    def add_all(self, grads: Sequence[Tensor]) -> Tensor:
        if len(grads) == 1:
            return grads[0]
        return self.op("Sum", list(grads))

    def mul(self, a, b) -> gs.Variable:
        return self.op("Mul", [a, b])

    def where(self, cond, a, b) -> gs.Variable:
        return self.op("Where", [cond, a, b])
