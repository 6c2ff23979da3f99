"""Gradient of Resize: every mode (nearest, linear, cubic, antialias) and coordinate
transformation mode, given by scales or sizes.

Resize is linear in its input and separable: along each resized axis a the output is an
(out x in) interpolation matrix M_a times the input, and the gradient applies each M_a's
transpose, one MatMul per resized axis. M_a is not re-derived here: a probe Resize with the
node's own attributes, resizing only axis a, is applied to the identity matrix laid out
along axes 0 and a, which yields M_a exactly as ONNX Runtime's kernel computes it (its
coordinate rounding, nearest ties, clamping, cubic coefficients). The probe's inputs are
constants, so ONNX Runtime folds it when the session is created.
Refused: scales, sizes or roi computed at run time, keep_aspect_ratio_policy other than
stretch, and resizing the batch axis.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..builder import static_shape
from . import register


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


def _probe_matrix(b, node, r: int, axis: int, size: int, out: int, scale, roi):
    """(size, out): M_axis transposed, from a Resize of the identity (see module doc)."""
    shape = [1] * r
    shape[0], shape[axis] = size, size
    identity = b.const(np.eye(size, dtype=np.float32).reshape(shape))
    attrs = {k: v for k, v in node.attrs.items()
             if k not in ("axes", "keep_aspect_ratio_policy")}
    attrs["extrapolation_value"] = 0.0  # extrapolated outputs are constants: no gradient
    inputs = [identity, b.const(roi) if roi is not None else None]
    if scale is not None:
        inputs.append(b.const(np.where(np.arange(r) == axis, scale, 1).astype(np.float32)))
    else:
        sizes = [1] * r
        sizes[0], sizes[axis] = size, out
        inputs += [None, b.ints(sizes)]
    probe = b.op("Resize", inputs, attrs)
    return b.op("Reshape", [probe, b.ints([size, out])])


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
        transposed = _probe_matrix(b, node, r, axis, size, out, scale, roi)
        if axis == r - 1:
            grad = b.op("MatMul", [grad, b.op("Transpose", [transposed], {"perm": [1, 0]})])
        else:
            tail = int(np.prod(in_dims[axis + 1:]))
            rows = b.op("Reshape", [grad, b.ints([-1, out, tail])])
            grad = b.op("MatMul", [transposed, rows])
    return [b.reshape_like(grad, x)] + rest
