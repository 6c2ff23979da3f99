"""Gradients of matrix products: Gemm (dense layers) and batched, broadcasting MatMul."""

from __future__ import annotations

import numpy as np

from ..builder import rank, static_shape
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


def _einsum_terms(node) -> tuple[list[str], str]:
    """The equation's operand and output subscripts with any ellipsis spelled out as letters
    (the same letters for the same trailing broadcast axes) and the implicit output made
    explicit."""
    equation = node.attrs["equation"]
    equation = (equation.decode() if isinstance(equation, bytes) else equation).replace(" ", "")
    lhs, arrow, out = equation.partition("->")
    terms = lhs.split(",")
    used = set(equation) - set(",->.")
    spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in used]
    shapes = [static_shape(x) for x in node.inputs]
    widths = [len(s) - len(t.replace("...", "")) for s, t in zip(shapes, terms)]
    ellipsis = spare[:max(widths, default=0)]
    spelled = [t.replace("...", "".join(ellipsis[len(ellipsis) - w:]))
               for t, w in zip(terms, widths)]
    if not arrow:
        counts = {c: "".join(spelled).count(c) for c in "".join(spelled)}
        out = "..." + "".join(sorted(c for c, k in counts.items() if k == 1 and c not in ellipsis))
    out = out.replace("...", "".join(ellipsis))
    sizes: dict[str, object] = {}
    for term, shape in zip(spelled, shapes):
        for letter, size in zip(term, shape):
            if sizes.setdefault(letter, size) != size:
                raise ValueError(f"Einsum axis {letter!r} is broadcast ({sizes[letter]} vs {size})")
    return spelled, out


@register("Einsum")
def einsum(b, node, grads, wants):
    """d operand_i = einsum(grad, the other operands -> operand_i's subscripts); axes of
    operand_i that appear nowhere else were summed away, so the result is broadcast back."""
    terms, out = _einsum_terms(node)
    result = []
    for i, (x, want) in enumerate(zip(node.inputs, wants)):
        if not want:
            result.append(None)
            continue
        if len(set(terms[i])) != len(terms[i]):
            raise ValueError(f"Einsum operand {terms[i]!r} repeats an axis (a diagonal)")
        others = [out] + [t for j, t in enumerate(terms) if j != i]
        kept = "".join(c for c in terms[i] if any(c in t for t in others))
        inputs = [grads[0]] + [t for j, t in enumerate(node.inputs) if j != i]
        grad = b.op("Einsum", inputs, {"equation": f"{','.join(others)}->{kept}"})
        if kept != terms[i]:
            missing = [k for k, c in enumerate(terms[i]) if c not in kept]
            grad = b.op("Expand", [b.op("Unsqueeze", [grad, b.ints(missing)]), b.shape_of(x)])
        result.append(grad)
    return result
