"""Gradient rules, one per op, grouped in modules by op family.

A rule receives the builder, the forward node, the gradient of each of the node's outputs
(None where no gradient flows) and, per input, whether a gradient is wanted. It returns one
entry per input: the gradient tensor, or None where none is wanted.
"""

from __future__ import annotations

from collections.abc import Callable

RULES: dict[str, Callable] = {}


def register(*ops: str):
    def decorate(rule: Callable) -> Callable:
        for op in ops:
            RULES[op] = rule
        return rule
    return decorate


def supported_ops() -> list[str]:
    return sorted(RULES)


from . import (  # noqa: E402,F401
    activation,
    conv,
    elementwise,
    linear,
    normalization,
    pool,
    quantize,
    recurrent,
    reduce,
    resize,
    shape,
)
