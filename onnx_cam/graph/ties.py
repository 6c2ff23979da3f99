"""Near-ties on the gradient's path: comparisons that route the gradient (a ReLU's sign, a
max-pool's winner) decided by less than float32 rounding.

Two correct float32 forwards that round differently (ONNX Runtime's fused kernels and torch's)
can take the other branch of such a comparison, and the gradient then flows elsewhere: the map
may differ there by a large fraction of its maximum. The count added here says, per row, how
many route-deciding values on the path from the chosen layers to the score lie within
`tolerance` times the largest magnitude of their tensor (per row) of the tie.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx_graphsurgeon as gs

from ..model import ancestors, differentiable_closure
from .builder import GradBuilder, rank
from .rules.pool import pool_geometry
from .rules.reduce import reduced_axes

SIGN_OPS = frozenset({"Relu", "LeakyRelu", "PRelu"})


def add_near_tie_count(builder: GradBuilder, score: gs.Variable, layers: list[str],
                       tolerance: float) -> gs.Variable:
    """A (N,) float tensor: per row, the near-ties of every route-deciding node that the
    gradient from `score` to `layers` passes through."""
    graph = builder.graph
    needed = ancestors(graph, score.name, differentiable_closure(graph, set(layers)))
    counts = []
    for node in list(graph.nodes):
        if not node.inputs or node.inputs[0].name not in needed:
            continue
        near = _near_ties(builder, node, tolerance)
        if near is not None:
            flat = builder.op("Cast", [near], {"to": 1})
            axes = list(range(1, rank(node.inputs[0])))  # near keeps the input's rank
            counts.append(builder.reduce_sum(flat, axes, keepdims=False))
    if not counts:
        return builder.op("ReduceSum", [builder.mul(score, np.float32(0)), builder.ints([1])],
                          {"keepdims": 0})
    return builder.add_all(counts)


def _near_ties(b: GradBuilder, node: gs.Node, tolerance: float):
    """A bool tensor (batch first) marking this node's near-ties, or None for other ops."""
    x = node.inputs[0]
    if node.op in SIGN_OPS:
        return _within(b, b.op("Abs", [x]), _margin(b, x, tolerance))
    if node.op == "Clip":
        bounds = [t for t in node.inputs[1:] if t.name]
        if not bounds:
            return None
        margin = _margin(b, x, tolerance)
        near = [_within(b, b.op("Abs", [b.op("Sub", [x, bound])]), margin) for bound in bounds]
        return near[0] if len(near) == 1 else b.op("Or", near, dtype=np.bool_)
    if node.op in ("ReduceMax", "ReduceMin", "GlobalMaxPool"):
        axes = (list(range(2, rank(x))) if node.op == "GlobalMaxPool"
                else reduced_axes(node))
        extreme = _reduce(b, "ReduceMin" if node.op == "ReduceMin" else "ReduceMax", x, axes)
        close = _within(b, b.op("Abs", [b.op("Sub", [x, extreme])]), _margin(b, x, tolerance))
        return _two_or_more(b, b.reduce_sum(b.op("Cast", [close], {"to": 1}), axes))
    if node.op == "MaxPool":
        return _max_pool_ties(b, node, tolerance)
    return None


def _margin(b: GradBuilder, x, tolerance: float):
    """tolerance x the largest |x| of each row, shaped to broadcast against x."""
    largest = _reduce(b, "ReduceMax", b.op("Abs", [x]), list(range(1, rank(x))))
    return b.mul(largest, np.float32(tolerance))


def _reduce(b: GradBuilder, op: str, x, axes: list[int]):
    """ReduceMax / ReduceMin keeping the reduced axes (axes are an input from opset 18)."""
    if b.opset >= 18:
        return b.op(op, [x, b.ints(axes)], {"keepdims": 1})
    return b.op(op, [x], {"axes": axes, "keepdims": 1})


def _within(b: GradBuilder, distance, margin):
    return b.op("LessOrEqual", [distance, margin], dtype=np.bool_)


def _two_or_more(b: GradBuilder, count):
    return b.op("Greater", [count, np.float32(1.5)], dtype=np.bool_)


def _max_pool_ties(b: GradBuilder, node: gs.Node, tolerance: float):
    """Windows where a second element lies within the margin of the winner.

    Each kernel tap is a strided slice of the padded input holding that tap's value for every
    window at once, so the count is exact for any kernel, stride, dilation and padding."""
    x, y = node.inputs[0], node.outputs[0]
    in_dims, out_dims, kernel, strides, dilations, pads = pool_geometry(node)
    n = len(in_dims)
    padded = b.op("Pad", [x, b.ints([0, 0, *pads[:n], 0, 0, *pads[n:]]),
                          np.float32(-np.inf)], {"mode": "constant"})
    axes = list(range(2, 2 + n))
    floor = b.op("Sub", [y, _margin(b, x, tolerance)])
    hits = []
    for tap in itertools.product(*(range(k) for k in kernel)):
        starts = [t * d for t, d in zip(tap, dilations)]
        ends = [s + (o - 1) * st + 1 for s, o, st in zip(starts, out_dims, strides)]
        window = b.op("Slice", [padded, b.ints(starts), b.ints(ends), b.ints(axes),
                                b.ints(strides)])
        hits.append(b.op("Cast", [b.op("GreaterOrEqual", [window, floor], dtype=np.bool_)],
                         {"to": 1}))
    return _two_or_more(b, b.add_all(hits))
