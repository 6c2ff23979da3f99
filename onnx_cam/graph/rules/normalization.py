"""Gradients of normalisation layers (inference BatchNorm, LayerNorm, InstanceNorm, GroupNorm)."""

from __future__ import annotations

import numpy as np

from ..builder import rank, static_shape
from . import register


def _per_channel(b, values, x):
    """Reshape a (C,) tensor to (1, C, 1, ...) so it broadcasts over x."""
    return b.op("Reshape", [values, b.ints([1, -1] + [1] * (rank(x) - 2))])


@register("BatchNormalization")
def batch_norm(b, node, grads, wants):
    if node.attrs.get("training_mode", 0):
        raise ValueError("BatchNormalization in training mode")
    if any(wants[1:]):
        raise ValueError("BatchNormalization parameters depend on a target layer")
    x, scale, _, _, var = node.inputs[:5]
    eps = np.float32(node.attrs.get("epsilon", 1e-5))
    factor = b.op("Div", [scale, b.op("Sqrt", [b.op("Add", [var, eps])])])
    return [b.mul(grads[0], _per_channel(b, factor, x))] + [None] * (len(node.inputs) - 1)


def normalized_backward(b, x, grad_hat, axes, eps):
    """d/dx of (x - mean) / sqrt(var + eps) over `axes`, given the gradient at its output.

    Means are ReduceMeans, so the normalised axes may be dynamic (sizes known at run time).
    """
    centred = b.op("Sub", [x, b.reduce_mean(x, axes)])
    variance = b.reduce_mean(b.mul(centred, centred), axes)
    inv_std = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [variance, np.float32(eps)])])])
    x_hat = b.mul(centred, inv_std)
    mean_grad = b.reduce_mean(grad_hat, axes)
    mean_proj = b.reduce_mean(b.mul(grad_hat, x_hat), axes)
    inner = b.op("Sub", [b.op("Sub", [grad_hat, mean_grad]), b.mul(x_hat, mean_proj)])
    return b.mul(inv_std, inner)


@register("LayerNormalization")
def layer_norm(b, node, grads, wants):
    if any(wants[1:]):
        raise ValueError("LayerNormalization parameters depend on a target layer")
    x, scale = node.inputs[:2]
    r = rank(x)
    axes = list(range(node.attrs.get("axis", -1) % r, r))
    grad_hat = b.mul(grads[0], scale)
    eps = node.attrs.get("epsilon", 1e-5)
    return [normalized_backward(b, x, grad_hat, axes, eps)] + [None] * (len(node.inputs) - 1)


@register("InstanceNormalization")
def instance_norm(b, node, grads, wants):
    if any(wants[1:]):
        raise ValueError("InstanceNormalization parameters depend on a target layer")
    x, scale = node.inputs[:2]
    axes = list(range(2, rank(x)))
    grad_hat = b.mul(grads[0], _per_channel(b, scale, x))
    eps = node.attrs.get("epsilon", 1e-5)
    return [normalized_backward(b, x, grad_hat, axes, eps)] + [None] * (len(node.inputs) - 1)


@register("GroupNormalization")
def group_norm(b, node, grads, wants):
    """Opset 18: scale and bias per group; opset 21: per channel. Statistics over each
    (item, group): the channels of the group and every spatial position."""
    if any(wants[1:]):
        raise ValueError("GroupNormalization parameters depend on a target layer")
    x, scale = node.inputs[:2]
    groups = node.attrs["num_groups"]
    channels = static_shape(x)[1]
    if not isinstance(channels, int):
        raise ValueError("the channel axis is dynamic")
    per_group = b.opset < 21
    size = static_shape(scale)[0] if scale.shape else None
    if size not in (None, groups if per_group else channels):
        raise ValueError(f"scale has {size} entries; opset {b.opset} expects one per "
                         f"{'group' if per_group else 'channel'}")
    if per_group:  # each group's factor repeated over its channels
        scale = b.op("Expand", [b.op("Reshape", [scale, b.ints([groups, 1])]),
                                b.ints([groups, channels // groups])])
    grad_hat = b.mul(grads[0], _per_channel(b, b.op("Reshape", [scale, b.ints([-1])]), x))
    grouped = b.ints([0, groups, -1])
    eps = node.attrs.get("epsilon", 1e-5)
    flat = normalized_backward(b, b.op("Reshape", [x, grouped]),
                               b.op("Reshape", [grad_hat, grouped]), [2], eps)
    return [b.reshape_like(flat, x)] + [None] * (len(node.inputs) - 1)
