"""Gradients of broadcasting binary ops; each input's gradient is summed back to its shape."""

from __future__ import annotations

import numpy as np

from . import register


@register("Add", "Sum")
def add(b, node, grads, wants):
    y, g = node.outputs[0], grads[0]
    return [b.unbroadcast(g, y, x) if want else None for x, want in zip(node.inputs, wants)]


@register("Sub")
def sub(b, node, grads, wants):
    (a, c), y, g = node.inputs, node.outputs[0], grads[0]
    return [b.unbroadcast(g, y, a) if wants[0] else None,
            b.unbroadcast(b.op("Neg", [g]), y, c) if wants[1] else None]


@register("Mul")
def mul(b, node, grads, wants):
    (a, c), y, g = node.inputs, node.outputs[0], grads[0]
    return [b.unbroadcast(b.mul(g, c), y, a) if wants[0] else None,
            b.unbroadcast(b.mul(g, a), y, c) if wants[1] else None]


@register("Div")
def div(b, node, grads, wants):
    (a, c), y, g = node.inputs, node.outputs[0], grads[0]
    grad_a = b.op("Div", [g, c])
    grad_c = b.op("Neg", [b.mul(grad_a, y)]) if wants[1] else None
    return [b.unbroadcast(grad_a, y, a) if wants[0] else None,
            b.unbroadcast(grad_c, y, c) if wants[1] else None]


@register("Pow")
def pow_(b, node, grads, wants):
    (a, e), y, g = node.inputs, node.outputs[0], grads[0]
    grad_a = grad_e = None
    if wants[0]:
        exponent = e if np.dtype(e.dtype) == np.float32 else b.op("Cast", [e], {"to": 1})
        power = b.op("Pow", [a, b.op("Sub", [exponent, np.float32(1)])])
        grad_a = b.unbroadcast(b.mul(g, b.mul(exponent, power)), y, a)
    if wants[1]:
        grad_e = b.unbroadcast(b.mul(g, b.mul(y, b.op("Log", [a]))), y, e)
    return [grad_a, grad_e]


@register("Where")
def where(b, node, grads, wants):
    (cond, a, c), y, g = node.inputs, node.outputs[0], grads[0]
    zero = np.float32(0)
    return [None,
            b.unbroadcast(b.where(cond, g, zero), y, a) if wants[1] else None,
            b.unbroadcast(b.where(cond, zero, g), y, c) if wants[2] else None]


@register("Max", "Min")
def max_min(b, node, grads, wants):
    # as torch.maximum / minimum: inputs tied for the extreme share the gradient equally
    y, g = node.outputs[0], grads[0]
    hits = [b.op("Equal", [x, y], dtype=np.bool_) for x in node.inputs]
    count = b.op("Sum", [b.op("Cast", [hit], {"to": 1}) for hit in hits])
    share = b.op("Div", [g, count])
    return [b.unbroadcast(b.where(hit, share, np.float32(0)), y, x) if want else None
            for x, hit, want in zip(node.inputs, hits, wants)]


@register("Mean")
def mean(b, node, grads, wants):
    y, share = node.outputs[0], b.mul(grads[0], np.float32(1 / len(node.inputs)))
    return [b.unbroadcast(share, y, x) if want else None for x, want in zip(node.inputs, wants)]
