"""Gradients of matrix products: Gemm (dense layers) and batched, broadcasting MatMul."""

from __future__ import annotations

import numpy as np

from ..builder import rank
from . import register


@register("Gemm")
def gemm(b, node, grads, wants):
    a, w = node.inputs[:2]
    y, g = node.outputs[0], grads[0]
    alpha, beta = node.attrs.get("alpha", 1.0), node.attrs.get("beta", 1.0)
    trans_a, trans_b = node.attrs.get("transA", 0), node.attrs.get("transB", 0)
    result = [None] * len(node.inputs)
    if wants[0]:
        if trans_a:
            result[0] = b.op("Gemm", [w, g], {"alpha": alpha, "transA": trans_b, "transB": 1})
        else:
            result[0] = b.op("Gemm", [g, w], {"alpha": alpha, "transB": 1 - trans_b})
    if wants[1]:
        if trans_b:
            result[1] = b.op("Gemm", [g, a], {"alpha": alpha, "transA": 1, "transB": trans_a})
        else:
            result[1] = b.op("Gemm", [a, g], {"alpha": alpha, "transA": 1 - trans_a})
    if len(node.inputs) > 2 and wants[2]:
        result[2] = b.unbroadcast(b.mul(g, np.float32(beta)), y, node.inputs[2])
    return result


def _swap_last(b, t):
    r = rank(t)
    perm = list(range(r - 2)) + [r - 1, r - 2]
    return b.op("Transpose", [t], {"perm": perm})


@register("MatMul")
def matmul(b, node, grads, wants):
    (a, c), y, g = node.inputs, node.outputs[0], grads[0]
    if rank(a) < 2 or rank(c) < 2:
        raise ValueError("MatMul with a 1-D operand is not supported")
    return [b.unbroadcast(b.op("MatMul", [g, _swap_last(b, c)]), y, a) if wants[0] else None,
            b.unbroadcast(b.op("MatMul", [_swap_last(b, a), g]), y, c) if wants[1] else None]
