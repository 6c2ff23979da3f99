"""Gradients of pooling: MaxPool via its Indices, AveragePool as a transposed box filter."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..builder import spatial_dims, static_shape
from . import register
from .conv import conv_geometry, explicit_pads


@register("MaxPool")
def max_pool(b, node, grads, wants):
    x = node.inputs[0]
    if node.attrs.get("storage_order", 0) != 0:
        raise ValueError("MaxPool with storage_order=1 is not supported")
    if len(node.outputs) < 2:
        node.outputs.append(gs.Variable(f"{node.outputs[0].name}/indices", dtype=np.int64))
    flat_index = b.op("Reshape", [node.outputs[1], b.ints([-1])], dtype=np.int64)
    flat_grad = b.op("Reshape", [grads[0], b.ints([-1])])
    flat_x = b.op("Reshape", [x, b.ints([-1])])
    summed = b.op("ScatterElements", [b.zeros_like(flat_x), flat_index, flat_grad],
                  {"axis": 0, "reduction": "add"})
    return [b.reshape_like(summed, x)]


def _window_counts(size, out, k, s, d, pad_begin, pad_end, include_pad):
    """Per output position, how many window taps the average divides by."""
    low, high = (-pad_begin, size + pad_end) if include_pad else (0, size)
    taps = np.arange(out)[:, None] * s - pad_begin + np.arange(k)[None, :] * d
    return ((taps >= low) & (taps < high)).sum(axis=1)


def pool_geometry(node):
    """A pool's spatial input and output sizes, kernel, strides, dilations and explicit pads
    ([begin..., end...], auto_pad resolved)."""
    in_dims, out_dims = spatial_dims(node.inputs[0]), spatial_dims(node.outputs[0])
    n = len(in_dims)
    kernel = list(node.attrs["kernel_shape"])
    strides = list(node.attrs.get("strides", [1] * n))
    dilations = list(node.attrs.get("dilations", [1] * n))
    pads = explicit_pads(node, in_dims, out_dims, kernel, strides, dilations)
    return in_dims, out_dims, kernel, strides, dilations, pads


@register("AveragePool")
def average_pool(b, node, grads, wants):
    x, y, g = node.inputs[0], node.outputs[0], grads[0]
    in_dims, out_dims, kernel, strides, dilations, pads = pool_geometry(node)
    n = len(in_dims)
    include_pad = bool(node.attrs.get("count_include_pad", 0))
    divisor = np.ones((1, 1), dtype=np.float64)
    for i in range(n):
        counts = _window_counts(in_dims[i], out_dims[i], kernel[i], strides[i], dilations[i],
                                pads[i], pads[n + i], include_pad)
        divisor = np.multiply.outer(divisor, counts)
    divisor = divisor.reshape((1, 1, *out_dims))
    channels = static_shape(x)[1]
    box = np.ones((channels, 1, *kernel), dtype=np.float32)
    scaled = b.mul(g, (1.0 / np.maximum(divisor, 1)).astype(np.float32))
    attrs = conv_geometry(node, x, y, kernel)
    attrs["group"] = channels
    return [b.op("ConvTranspose", [scaled, box], attrs)]


@register("GlobalAveragePool")
def global_average_pool(b, node, grads, wants):
    x = node.inputs[0]
    scale = np.float32(1.0 / np.prod(spatial_dims(x)))
    return [b.op("Expand", [b.mul(grads[0], scale), b.shape_of(x)])]


@register("GlobalMaxPool")
def global_max_pool(b, node, grads, wants):
    # as torch's adaptive max pooling: the whole gradient goes to the first maximum
    x = node.inputs[0]
    flat_x = b.op("Reshape", [x, b.ints([0, 0, -1])])
    first_max = b.op("ArgMax", [flat_x], {"axis": 2, "keepdims": 1}, dtype=np.int64)
    flat_grad = b.op("Reshape", [grads[0], b.ints([0, 0, 1])])
    placed = b.op("ScatterElements", [b.zeros_like(flat_x), first_max, flat_grad], {"axis": 2})
    return [b.reshape_like(placed, x)]
