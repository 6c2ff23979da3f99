"""Gradient of Resize: every mode (nearest, linear, cubic, antialias) and coordinate
transformation mode, given by scales or sizes.

Resize is linear in its input and separable: along each resized axis a the output is an
(out x in) interpolation matrix M_a times the input, and the gradient applies each M_a's
transpose. M_a is not re-derived here: a probe Resize with the node's own attributes,
resizing only axis a, is run by ONNX Runtime on the identity matrix when the graph is built,
which yields M_a exactly as its kernel computes it (coordinate rounding, nearest ties,
clamping, cubic coefficients). M_a^T is then applied as one MatMul, or on long axes, where
each input feeds only k << out outputs, as k Gathers of the gradient, weighted and summed
(O(k) instead of O(out) per entry).
Refused: scales, sizes or roi computed at run time, keep_aspect_ratio_policy other than
stretch, and resizing the batch axis.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from ..builder import static_shape
from . import register

_PROBE_ROWS = 1024  # identity rows per probe run (bounds the probe's memory)
# Gathers beat ONNX Runtime's GEMM only on long axes: measured on 2 cores, 4-tap linear x2
# upsampling of (16, 32, 2500 -> 5000) took 290-620 ms as Gathers vs 670-1070 ms as a MatMul,
# of (16, 32, 500 -> 1000) 60 ms vs 27-54 ms
SPARSE_FACTOR = 400


def _given(node, index: int, what: str):
    """The constant values of optional input `index`; None when absent or empty."""
    if len(node.inputs) <= index or not node.inputs[index].name:
        return None
    tensor = node.inputs[index]
    if not isinstance(tensor, gs.Constant):
        raise ValueError(f"the Resize {what} are computed at run time")
    values = tensor.values.reshape(-1)
    return values if values.size else None


def _full(values, axes: list[int], r: int, fill) -> np.ndarray:
    """Per-axis values given for `axes` (opset 18 `axes`) spread over all r axes."""
    full = np.full(r, fill, dtype=np.asarray(values).dtype)
    full[axes] = values
    return full


def interpolation_matrix(node, opset: int, r: int, axis: int, size: int, out: int,
                         scale, roi) -> np.ndarray:
    """(out, size) float32: M_axis as ONNX Runtime computes it (see module doc)."""
    attrs = {k: v for k, v in node.attrs.items()
             if k not in ("axes", "keep_aspect_ratio_policy")}
    attrs["extrapolation_value"] = 0.0  # extrapolated outputs are constants: no gradient
    shape = ["k"] + [1] * (r - 1)
    shape[axis] = size
    inputs = [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)]
    consts = []
    if roi is not None:
        consts.append(onnx.numpy_helper.from_array(np.asarray(roi, np.float32), "roi"))
    names = ["x", "roi" if roi is not None else ""]
    if scale is not None:
        factors = np.where(np.arange(r) == axis, scale, 1).astype(np.float32)
        consts.append(onnx.numpy_helper.from_array(factors, "scales"))
        names.append("scales")
    else:  # sizes include the probe's batch axis, fed with each run
        inputs.append(onnx.helper.make_tensor_value_info("sizes", onnx.TensorProto.INT64, [r]))
        names += ["", "sizes"]
    probe = onnx.helper.make_model(
        onnx.helper.make_graph([onnx.helper.make_node("Resize", names, ["y"], **attrs)],
                               "probe", inputs,
                               [onnx.helper.make_tensor_value_info("y", 1, None)], consts),
        opset_imports=[onnx.helper.make_opsetid("", opset)])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    identity = np.eye(size, dtype=np.float32)
    columns = []
    for start in range(0, size, _PROBE_ROWS):
        rows = identity[start:start + _PROBE_ROWS]
        feeds = {"x": rows.reshape([len(rows)] + shape[1:])}
        if scale is None:
            sizes = [len(rows)] + [1] * (r - 1)
            sizes[axis] = out
            feeds["sizes"] = np.array(sizes, np.int64)
        columns.append(session.run(None, feeds)[0].reshape(len(rows), out))
    return np.concatenate(columns).T


def _shape_with(b, t, axis: int, r: int, dims: list[int]):
    """t's run-time shape with `axis` replaced by `dims`."""
    shape = b.op("Shape", [t], dtype=np.int64)
    return b.op("Concat", [b.op("Slice", [shape, b.ints([0]), b.ints([axis])], dtype=np.int64),
                           b.ints(dims),
                           b.op("Slice", [shape, b.ints([axis + 1]), b.ints([r])],
                                dtype=np.int64)], {"axis": 0}, dtype=np.int64)


def _apply_transposed(b, grad, matrix: np.ndarray, axis: int, r: int, tail: int):
    """grad (.., out at axis, ..) -> (.., size at axis, ..): sum_o matrix[o, i] grad[o]."""
    out, size = matrix.shape
    factor = out // size
    if out == factor * size and np.array_equal(matrix, np.kron(np.eye(size),
                                                               np.ones((factor, 1)))):
        # each input copied to `factor` neighbours (nearest, integer factor): sum them
        split = b.op("Reshape", [grad, _shape_with(b, grad, axis, r, [size, factor])])
        return b.reduce_sum(split, [axis + 1], keepdims=False)
    users = matrix.T != 0  # (size, out): the outputs each input feeds
    taps = int(users.sum(axis=1).max(initial=0))
    if 0 < SPARSE_FACTOR * taps < out:  # sparse: `taps` weighted Gathers along the axis
        order = np.argsort(~users, axis=1, kind="stable")[:, :taps]  # (size, taps)
        weights = np.take_along_axis(matrix.T, order, axis=1)
        along = [1] * r
        along[axis] = size
        parts = [b.mul(b.op("Gather", [grad, b.const(order[:, k], np.int64)], {"axis": axis}),
                       b.const(weights[:, k].reshape(along)))
                 for k in range(taps)]
        return b.add_all(parts)
    if axis == r - 1:
        return b.op("MatMul", [grad, b.const(matrix)])
    rows = b.op("Reshape", [grad, b.ints([-1, out, tail])])
    mixed = b.op("MatMul", [b.const(np.ascontiguousarray(matrix.T)), rows])
    return b.op("Reshape", [mixed, _shape_with(b, grad, axis, r, [size])])


@register("Resize")
def resize(b, node, grads, wants):
    x, y, grad = node.inputs[0], node.outputs[0], grads[0]
    in_dims, out_dims = static_shape(x), static_shape(y)
    r = len(in_dims)
    rest = [None] * (len(node.inputs) - 1)
    policy = node.attrs.get("keep_aspect_ratio_policy", "stretch")
    if (policy.decode() if isinstance(policy, bytes) else policy) != "stretch":
        raise ValueError(f"keep_aspect_ratio_policy {policy!r} is not supported")
    axes = [a % r for a in node.attrs.get("axes", [])] or list(range(r))
    scales = _given(node, 2, "scales")
    if scales is not None:
        scales = _full(scales.astype(np.float32), axes, r, np.float32(1))
    roi = _given(node, 1, "roi")
    if roi is not None:
        half = len(roi) // 2
        roi = np.concatenate([_full(roi[:half], axes, r, 0.0), _full(roi[half:], axes, r, 1.0)])
    if scales is not None:  # ONNX Runtime's output sizes (inference may round differently)
        out_dims = [int(np.float32(k) * np.float32(n)) if isinstance(n, int) else d
                    for k, n, d in zip(scales, in_dims, out_dims)]
    if in_dims == out_dims:  # ONNX Runtime copies the input
        return [grad] + rest
    for axis in reversed(range(r)):
        size, out = in_dims[axis], out_dims[axis]
        if (scales[axis] == 1) if scales is not None else (
                size == out or not isinstance(size, int) and not isinstance(out, int)):
            continue  # ONNX Runtime maps a scale-1 axis onto itself; a dynamic axis whose
            # output size is dynamic too is the batch, its size taken from Shape(x)
        if axis == 0 or not all(isinstance(d, int) for d in [size, out, *in_dims[axis + 1:]]):
            raise ValueError(f"Resize along axis {axis} needs static sizes from there on "
                             "and an unresized batch axis")
        scale = None if scales is None else scales[axis]
        if size == out:  # the probe would be a plain copy, the forward was not
            raise ValueError(f"Resize scale {scale} keeps axis {axis}'s size")
        matrix = interpolation_matrix(node, b.opset, r, axis, size, out, scale, roi)
        grad = _apply_transposed(b, grad, matrix, axis, r, int(np.prod(in_dims[axis + 1:])))
    return [b.reshape_like(grad, x)] + rest
