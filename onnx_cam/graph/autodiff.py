"""Reverse-mode differentiation of an ONNX graph, from a score back to chosen tensors."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx_graphsurgeon as gs
from onnx import shape_inference

from ..errors import LayerError, UnsupportedModelError, UnsupportedOpError
from ..model import NON_DIFFERENTIABLE, ancestors, differentiable_closure, node_inputs
from .builder import GradBuilder
from .rules import RULES, supported_ops
from .unroll import obstacle

STANDARD_DOMAINS = (None, "", "ai.onnx")  # graphsurgeon reads the default as None


def add_gradients(builder: GradBuilder, score: gs.Variable, seed: gs.Variable,
                  targets: list[str],
                  overrides: Mapping[str, Callable] | None = None) -> dict[str, gs.Variable]:
    """Insert nodes computing d(sum(seed * score)) / d(target) for each target tensor.

    Only nodes on a differentiable path from a target to the score are differentiated;
    no parameter gradient is formed. Returns the gradient tensor of each target.
    overrides: op type -> rule used instead of the registered one for this build only
    (e.g. {"Relu": guided_relu} for Guided Backpropagation).
    """
    rules = {**RULES, **(overrides or {})}
    graph = builder.graph
    active = differentiable_closure(graph, set(targets))
    needed = ancestors(graph, score.name, active)
    for name in targets:
        if name not in needed:
            raise LayerError(
                f"The score does not depend on layer tensor {name!r} through differentiable "
                "ops, so its gradient is zero everywhere. Choose a layer below the output."
            )
    pending: dict[str, list] = {score.name: [seed]}
    path = [n for n in graph.nodes if any(o.name in needed for o in n.outputs)]
    loop = next((n for n in path if n.op in ("Loop", "Scan")), None)
    if loop is not None:  # one the graph's preparation did not unroll
        why = obstacle(loop, lambda op: op in rules or op in NON_DIFFERENTIABLE)
        raise UnsupportedOpError(f"Cannot differentiate {loop.op} node {loop.name!r}: "
                                 f"{why or 'it is not unrolled in this graph'}.")
    for node in reversed(path):
        out_grads = []
        for out in node.outputs:
            total = _total(builder, pending.get(out.name))
            pending[out.name] = [total] if total is not None else []
            out_grads.append(total)
        wants = [t.name in needed and not isinstance(t, gs.Constant) for t in node.inputs]
        implicit = any(t.name in needed for t in node_inputs(node)[len(node.inputs):])
        if all(g is None for g in out_grads) or not (any(wants) or implicit):
            continue
        # rules are the standard ops'; a custom domain's op of the same name means another thing
        rule = rules.get(node.op) if node.domain in STANDARD_DOMAINS else None
        if rule is None or implicit:  # a rule differentiates a node's own inputs only
            op = node.op if node.domain in STANDARD_DOMAINS else f"{node.domain}.{node.op}"
            raise UnsupportedOpError(
                f"Op {op} (node {node.name!r}) lies between a target layer and the score, "
                f"and onnx-cam has no gradient rule for it. Choose a layer above it, or ask "
                f"for a rule. Supported ops: {', '.join(supported_ops())}."
            )
        try:
            in_grads = rule(builder, node, out_grads, wants)
        except ValueError as exc:  # a form the rule refuses, with the reason
            raise UnsupportedModelError(
                f"Cannot differentiate {node.op} node {node.name!r}: {exc}."
            ) from None
        except (TypeError, IndexError, KeyError) as exc:  # a form the rule did not foresee
            raise UnsupportedModelError(
                f"Cannot differentiate {node.op} node {node.name!r}: its gradient rule failed "
                f"({type(exc).__name__}: {exc}). Choose a layer above it, and please report "
                "the model."
            ) from None
        for tensor, want, grad in zip(node.inputs, wants, in_grads):
            if want and grad is not None:
                pending.setdefault(tensor.name, []).append(grad)
    return {name: _total(builder, pending.get(name)) for name in targets}


def hessian_vector_products(builder: GradBuilder, grads: dict[str, gs.Variable],
                            vectors: dict[str, gs.Variable]) -> dict[str, gs.Variable]:
    """Per target, d(sum(grad * v)) / d(target) with v held constant: the Hessian of the
    score at the target times v, exactly, by differentiating the gradient subgraph itself.

    The rules read static shapes, which the gradient subgraph's tensors lack: the builder
    moves to a copy of its graph with shapes inferred, so callers look tensors up again.
    """
    proto = shape_inference.infer_shapes(gs.export_onnx(builder.graph, do_type_check=False),
                                         data_prop=True)
    builder.graph = gs.import_onnx(proto)
    builder.forget_shapes()
    tensors = builder.graph.tensors()
    products = {}
    for name, grad in grads.items():
        try:
            products[name] = add_gradients(builder, tensors[grad.name],
                                           tensors[vectors[name].name], [name])[name]
        except LayerError:  # the gradient does not depend on the target: a zero Hessian
            products[name] = builder.zeros_like(tensors[name])
        except UnsupportedOpError as exc:
            raise UnsupportedOpError(
                f"The Hessian-vector product (ShapleyCAM) differentiates the gradient "
                f"subgraph itself, and it meets an op with no gradient rule: {exc}") from None
    return products


def _total(builder: GradBuilder, grads: list | None):
    if not grads:
        return None
    return builder.add_all(grads)


def seed_from_prediction(builder: GradBuilder, score: gs.Variable) -> gs.Variable:
    """A one-hot seed on each row's arg-max: explains the predicted class in the same run."""
    classes = score.shape[1]
    index = builder.op("ArgMax", [score], {"axis": 1, "keepdims": 1}, dtype=np.int64)
    eye = builder.const(np.eye(classes, dtype=np.float32))
    flat = builder.op("Reshape", [index, builder.ints([-1])], dtype=np.int64)
    return builder.op("Gather", [eye, flat], {"axis": 0})
