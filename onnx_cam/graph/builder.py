"""Emit the nodes of the gradient subgraph into an onnx-graphsurgeon graph."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

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


class GradBuilder:
    """Appends gradient nodes to a graph; every helper returns the new output tensor."""

    def __init__(self, graph: gs.Graph, opset: int):
        self.graph = graph
        self.opset = opset
        self._count = 0
        self._shapes: dict[str, gs.Variable] = {}

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"onnx_cam/grad/{hint}_{self._count}"

    def const(self, value, dtype=np.float32) -> gs.Constant:
        return gs.Constant(self._name("const"), np.asarray(value, dtype=dtype))

    def ints(self, values: Sequence[int]) -> gs.Constant:
        return self.const(np.asarray(values, dtype=np.int64).reshape(-1), np.int64)

    def op(self, op: str, inputs: Sequence, attrs: dict | None = None, *, outputs: int = 1,
           dtype=np.float32):
        """Add one node; numpy arrays and Python numbers among `inputs` become constants."""
        ins = []
        for value in inputs:
            if value is None:
                ins.append(gs.Variable.empty())
            elif isinstance(value, (gs.Variable, gs.Constant)):
                ins.append(value)
            else:
                ins.append(self.const(value))
        outs = [gs.Variable(self._name(op), dtype=dtype) for _ in range(outputs)]
        self.graph.nodes.append(gs.Node(op, self._name(op), attrs or {}, ins, outs))
        return outs[0] if outputs == 1 else outs

    # ---- shapes ------------------------------------------------------------------------
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
