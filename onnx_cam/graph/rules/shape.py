"""Gradients of ops that move values without changing them (reshape, transpose, slicing...)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..builder import rank, static_shape
from ..precision import is_float, is_half
from . import register


def _rest(node):
    return [None] * (len(node.inputs) - 1)


@register("Identity", "Dropout")
def identity(b, node, grads, wants):
    return [grads[0]] + _rest(node)


@register("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(b, node, grads, wants):
    return [b.reshape_like(grads[0], node.inputs[0])] + _rest(node)


@register("Expand")
def expand(b, node, grads, wants):
    return [b.unbroadcast(grads[0], node.outputs[0], node.inputs[0]), None]


@register("Cast")
def cast(b, node, grads, wants):
    # gradients of 16-bit float tensors, and of integers standing for real numbers (a
    # quantised model's accumulators), are held in float32 (see GradBuilder.float32)
    x = node.inputs[0]
    to = (onnx.TensorProto.FLOAT if is_half(x.dtype) or not is_float(x.dtype)
          else onnx.helper.np_dtype_to_tensor_dtype(np.dtype(x.dtype)))
    return [b.op("Cast", [grads[0]], {"to": to})]


@register("Transpose")
def transpose(b, node, grads, wants):
    perm = node.attrs.get("perm", list(reversed(range(rank(node.inputs[0])))))
    return [b.op("Transpose", [grads[0]], {"perm": list(np.argsort(perm))})]


@register("Concat")
def concat(b, node, grads, wants):
    axis = node.attrs["axis"] % rank(node.outputs[0])
    result, offset = [], 0
    for x, want in zip(node.inputs, wants):
        size = static_shape(x)[axis]
        if not isinstance(size, int):
            raise ValueError("Concat along a dynamic axis")
        if want:
            result.append(b.op("Slice", [grads[0], b.ints([offset]), b.ints([offset + size]),
                                         b.ints([axis])]))
        else:
            result.append(None)
        offset += size
    return result


@register("Split")
def split(b, node, grads, wants):
    axis = node.attrs.get("axis", 0)
    parts = [g if g is not None else b.zeros_like(out) for g, out in zip(grads, node.outputs)]
    return [b.op("Concat", parts, {"axis": axis})] + _rest(node)


def _constant_ints(tensor, what):
    if not isinstance(tensor, gs.Constant):
        raise ValueError(f"the {what} are computed at run time")
    return [int(v) for v in tensor.values.reshape(-1)]


@register("Slice")
def slice_(b, node, grads, wants):
    x = node.inputs[0]
    shape = static_shape(x)
    starts = _constant_ints(node.inputs[1], "slice starts")
    ends = _constant_ints(node.inputs[2], "slice ends")
    axes = (_constant_ints(node.inputs[3], "slice axes") if len(node.inputs) > 3
            and node.inputs[3].name else list(range(len(starts))))
    steps = (_constant_ints(node.inputs[4], "slice steps") if len(node.inputs) > 4
             and node.inputs[4].name else [1] * len(starts))
    if any(s != 1 for s in steps):
        raise ValueError("Slice with a step other than 1 is not supported")
    r = len(shape)
    pads: list = [0] * (2 * r)
    for start, end, axis in zip(starts, ends, axes):
        axis %= r
        size = shape[axis]
        if isinstance(size, int):
            first, stop, _ = slice(start, end).indices(size)
            pads[axis], pads[r + axis] = first, size - max(stop, first)
        else:  # a dynamic axis (the batch, a Loop's steps): the pads are computed at run time
            pads[axis], pads[r + axis] = _dynamic_pads(b, x, axis, start, end)
    if all(isinstance(p, int) for p in pads):
        return [b.op("Pad", [grads[0], b.ints(pads)])] + _rest(node)
    parts = [b.ints([p]) if isinstance(p, int) else p for p in pads]
    runtime = b.op("Concat", parts, {"axis": 0}, dtype=np.int64)
    return [b.op("Pad", [grads[0], runtime])] + _rest(node)


def _dynamic_pads(b, x, axis: int, start: int, end: int):
    """(before, after) pads undoing x[start:end] along a dynamic axis, as ONNX Slice clamps."""
    size = b.op("Slice", [b.shape_of(x), b.ints([axis]), b.ints([axis + 1])], dtype=np.int64)
    zero = b.ints([0])

    def position(index: int):
        at = b.op("Add", [size, b.ints([index])], dtype=np.int64) if index < 0 else b.ints([index])
        return b.op("Min", [b.op("Max", [at, zero], dtype=np.int64), size], dtype=np.int64)

    first = position(start)
    stop = b.op("Max", [position(end), first], dtype=np.int64)
    return first, b.op("Sub", [size, stop], dtype=np.int64)


@register("Pad")
def pad(b, node, grads, wants):
    mode = node.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        raise ValueError(f"Pad in {mode!r} mode is not supported")
    r = rank(node.inputs[0])
    pads = _constant_ints(node.inputs[1], "pads")
    axes = (_constant_ints(node.inputs[3], "pad axes") if len(node.inputs) > 3
            and node.inputs[3].name else list(range(r)))
    n = len(axes)
    starts, ends, sliced = [], [], []
    for i, axis in enumerate(axes):
        begin, end = pads[i], pads[n + i]
        if begin < 0 or end < 0:
            raise ValueError("Pad with negative pads is not supported")
        if begin or end:  # counting from the end needs no static size (batch axes are dynamic)
            starts.append(begin)
            ends.append(-end if end else np.iinfo(np.int64).max)
            sliced.append(axis % r)
    if not sliced:
        return [grads[0]] + _rest(node)
    cut = b.op("Slice", [grads[0], b.ints(starts), b.ints(ends), b.ints(sliced)])
    return [cut] + _rest(node)


@register("Gather")
def gather(b, node, grads, wants):
    data, indices = node.inputs
    if not isinstance(indices, gs.Constant):
        raise ValueError("Gather indices computed at run time")
    r = rank(data)
    axis = node.attrs.get("axis", 0) % r
    size = static_shape(data)[axis]
    flat = indices.values.reshape(-1).astype(np.int64) % size
    # the gradient laid out as data with the gathered axis holding len(flat) entries
    shape = b.shape_of(data)
    parts = [b.op("Slice", [shape, b.ints([0]), b.ints([axis])], dtype=np.int64),
             b.ints([len(flat)]),
             b.op("Slice", [shape, b.ints([axis + 1]), b.ints([r])], dtype=np.int64)]
    layout = b.op("Concat", parts, {"axis": 0}, dtype=np.int64)
    grad = b.op("Reshape", [grads[0], layout])
    column = flat.reshape([-1 if i == axis else 1 for i in range(r)])
    where = b.op("Expand", [b.const(column, np.int64), layout], dtype=np.int64)
    placed = b.op("ScatterElements", [b.zeros_like(data), where, grad],
                  {"axis": axis, "reduction": "add"})
    return [placed, None]
