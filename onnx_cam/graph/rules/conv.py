"""Gradients of Conv (1D/2D/3D, any strides, pads, dilations, groups): a ConvTranspose, and
of ConvTranspose: a Conv."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..builder import spatial_dims
from . import register


def explicit_pads(node, in_dims, out_dims, kernel, strides, dilations) -> list[int]:
    """The forward op's pads as [begin..., end...], resolving auto_pad."""
    n = len(in_dims)
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad in ("NOTSET", ""):
        return list(node.attrs.get("pads", [0] * (2 * n)))
    if auto_pad == "VALID":
        return [0] * (2 * n)
    begin, end = [], []
    for size, out, k, s, d in zip(in_dims, out_dims, kernel, strides, dilations):
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin + end


def transposed_geometry(in_dims, out_dims, kernel, strides, dilations, pads):
    """Pads and output_padding for a ConvTranspose that maps out_dims back onto in_dims.

    The transposed op spans (out - 1) * s + (k - 1) * d + 1 positions starting at -pad_begin;
    cropping pad_begin in front and the overhang at the end lands exactly on the input, and
    input positions no window reached (floor mode) come back as zeros via output_padding.
    """
    n = len(in_dims)
    ends, extra = [], []
    for i in range(n):
        span = (out_dims[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
        overhang = span - pads[i] - in_dims[i]
        ends.append(max(overhang, 0))
        extra.append(max(-overhang, 0))
    return list(pads[:n]) + ends, extra


def conv_geometry(node, x, y, kernel):
    in_dims, out_dims = spatial_dims(x), spatial_dims(y)
    n = len(in_dims)
    strides = list(node.attrs.get("strides", [1] * n))
    dilations = list(node.attrs.get("dilations", [1] * n))
    pads = explicit_pads(node, in_dims, out_dims, kernel, strides, dilations)
    t_pads, extra = transposed_geometry(in_dims, out_dims, kernel, strides, dilations, pads)
    return {"strides": strides, "dilations": dilations, "pads": t_pads, "output_padding": extra,
            "kernel_shape": list(kernel)}


def flipped_weights(w: np.ndarray, groups: int) -> np.ndarray:
    """(C_out, C_in/g, *k) -> (C_in, C_out/g, *k) with each kernel reversed: the weights of the
    Conv that maps a stride-1 convolution's output gradient back to its input."""
    c_out, c_in_g = w.shape[:2]
    per_group = w.reshape(groups, c_out // groups, c_in_g, *w.shape[2:]).swapaxes(1, 2)
    turned = per_group.reshape(groups * c_in_g, c_out // groups, *w.shape[2:])
    return np.ascontiguousarray(np.flip(turned, axis=tuple(range(2, w.ndim))))


@register("Conv")
def conv(b, node, grads, wants):
    x, w = node.inputs[0], b.float32(node.inputs[1])  # a constant where the weights are
    if any(wants[1:]):
        raise ValueError("the convolution's weights or bias depend on a target layer")
    kernel = list(w.shape[2:])
    group = node.attrs.get("group", 1)
    rest = [None] * (len(node.inputs) - 1)
    attrs = conv_geometry(node, x, node.outputs[0], kernel)
    if isinstance(w, gs.Constant) and all(s == 1 for s in attrs["strides"]):
        # stride 1: a plain Conv with flipped weights and pads d(k-1) - p, which ONNX Runtime
        # runs faster than ConvTranspose (only while no pad exceeds the kernel's reach)
        forward = explicit_pads(node, spatial_dims(x), spatial_dims(node.outputs[0]), kernel,
                                attrs["strides"], attrs["dilations"])
        reach = [d * (k - 1) for d, k in zip(attrs["dilations"], kernel)]
        pads = [r - p for r, p in zip(reach * 2, forward)]
        if min(pads) >= 0:
            flipped = b.const(flipped_weights(w.values, group), w.values.dtype)
            conv_attrs = {"pads": pads, "dilations": attrs["dilations"], "group": group,
                          "kernel_shape": kernel}
            return [b.op("Conv", [grads[0], flipped], conv_attrs)] + rest
    attrs["group"] = group
    return [b.op("ConvTranspose", [grads[0], w], attrs)] + rest


@register("ConvTranspose")
def conv_transpose(b, node, grads, wants):
    """The adjoint of y[i*s + t*d - p_begin] += x[i] * W[t] is a Conv of dy with the same W
    (read as (C_in, C_out/g, *k): C_out/g -> C_in channels per group), strides, dilations and
    p_begin, no flip; the end pad only has to reach the last input position's window."""
    x, w = node.inputs[:2]
    if any(wants[1:]):
        raise ValueError("the transposed convolution's weights or bias depend on a target layer")
    if node.attrs.get("output_shape"):
        raise ValueError("ConvTranspose with output_shape is not supported; export it with pads")
    in_dims, out_dims = spatial_dims(x), spatial_dims(node.outputs[0])
    n = len(in_dims)
    kernel = list(node.attrs.get("kernel_shape", w.shape[2:]))
    strides = list(node.attrs.get("strides", [1] * n))
    dilations = list(node.attrs.get("dilations", [1] * n))
    extra = list(node.attrs.get("output_padding", [0] * n))
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("NOTSET", "", "VALID"):
        pads = list(node.attrs.get("pads", [0] * (2 * n))) if auto_pad != "VALID" else [0] * 2 * n
        begin = pads[:n]
    else:  # SAME_UPPER / SAME_LOWER: the output is in * stride, the padding split as the spec
        begin = []
        for size, out, k, s, d, o in zip(in_dims, out_dims, kernel, strides, dilations, extra):
            total = max(0, s * (size - 1) + o + (k - 1) * d + 1 - out)
            begin.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
    end = [max(0, (size - 1) * s + (k - 1) * d + 1 - out - p) for size, out, k, s, d, p
           in zip(in_dims, out_dims, kernel, strides, dilations, begin)]
    attrs = {"strides": strides, "dilations": dilations, "pads": begin + end,
             "group": node.attrs.get("group", 1), "kernel_shape": kernel}
    return [b.op("Conv", [grads[0], w], attrs)] + [None] * (len(node.inputs) - 1)
