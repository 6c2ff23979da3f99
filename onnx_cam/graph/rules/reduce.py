"""Gradients of reductions: the gradient is broadcast back over the reduced axes."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..builder import rank, static_shape
from . import register


def reduced_axes(node) -> list[int]:
    x = node.inputs[0]
    r = rank(x)
    if "axes" in node.attrs:
        axes = list(node.attrs["axes"])
    elif len(node.inputs) > 1 and node.inputs[1].name:
        if not isinstance(node.inputs[1], gs.Constant):
            raise ValueError("the reduction axes are computed at run time")
        axes = [int(a) for a in node.inputs[1].values.reshape(-1)]
    else:
        axes = []
    if not axes:
        axes = [] if node.attrs.get("noop_with_empty_axes", 0) else list(range(r))
    return sorted(a % r for a in axes)


def _kept(b, node, grad, axes):
    """The output gradient with the reduced axes restored as size-1 axes."""
    if node.attrs.get("keepdims", 1) or not axes:
        return grad
    return b.op("Unsqueeze", [grad, b.ints(axes)])


@register("ReduceSum", "ReduceMean")
def reduce_sum_mean(b, node, grads, wants):
    x = node.inputs[0]
    axes = reduced_axes(node)
    grad = _kept(b, node, grads[0], axes)
    if node.op == "ReduceMean" and axes:
        sizes = [static_shape(x)[a] for a in axes]
        if all(isinstance(s, int) for s in sizes):
            grad = b.mul(grad, np.float32(1.0 / np.prod(sizes)))
        else:  # a dynamic axis: count the reduced entries at run time
            picked = b.op("Gather", [b.shape_of(x), b.ints(axes)], dtype=np.int64)
            count = b.op("ReduceProd", [picked], {"keepdims": 0}, dtype=np.int64)
            grad = b.op("Div", [grad, b.op("Cast", [count], {"to": 1})])
    return [b.op("Expand", [grad, b.shape_of(x)])] + [None] * (len(node.inputs) - 1)


@register("ReduceMax", "ReduceMin")
def reduce_max_min(b, node, grads, wants):
    # as torch's amax / amin: ties share the gradient equally
    x, y = node.inputs[0], node.outputs[0]
    axes = reduced_axes(node)
    extreme = _kept(b, node, y, axes)
    hit = b.op("Equal", [x, extreme], dtype=np.bool_)
    count = b.reduce_sum(b.op("Cast", [hit], {"to": 1}), axes)
    share = b.op("Div", [_kept(b, node, grads[0], axes), count])
    return [b.where(hit, share, np.float32(0))] + [None] * (len(node.inputs) - 1)
