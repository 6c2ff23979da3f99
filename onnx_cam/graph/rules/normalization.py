"""Gradients of normalisation layers (inference BatchNorm, LayerNorm, InstanceNorm)."""

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


def _mean(b, t, axes, count):
    return b.mul(b.reduce_sum(t, axes), np.float32(1.0 / count))


def normalized_backward(b, x, grad_hat, axes, eps):
    """d/dx of (x - mean) / sqrt(var + eps) over `axes`, given the gradient at its output."""
    count = int(np.prod([static_shape(x)[a] for a in axes]))
    centred = b.op("Sub", [x, _mean(b, x, axes, count)])
    variance = _mean(b, b.mul(centred, centred), axes, count)
    inv_std = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [variance, np.float32(eps)])])])
    x_hat = b.mul(centred, inv_std)
    mean_grad = _mean(b, grad_hat, axes, count)
    mean_proj = _mean(b, b.mul(grad_hat, x_hat), axes, count)
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
