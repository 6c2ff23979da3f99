"""com.microsoft ops of ONNX Runtime's optimised graphs, as the standard ops they fuse."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import shape_inference

from ..errors import UnsupportedModelError, UnsupportedOpError
from . import HINT, MS, Rewriter, attr, attrs, rewrites


@rewrites((MS, "FusedConv"))
def _fused_conv(r: Rewriter, node) -> None:
    """act(Conv(X, W, B) + Z), Z optional."""
    out = node.output[0]
    # the Conv's own output under the name the exporter gave it (node name + "_output_0")
    conv_out = r.fresh(f"{node.name}_output_0" if node.name else f"{out}/conv")
    r.add("Conv", [n for n in node.input[:3] if n], conv_out, node.name or f"{out}/Conv",
          **attrs(node, drop=("activation", "activation_params")))
    summed = conv_out
    if len(node.input) > 3 and node.input[3]:
        summed = r.add("Add", [conv_out, node.input[3]], r.fresh(f"{conv_out}/sum"),
                       f"{node.name}/Add")
    r.activation(node, summed, out, list(attr(node, "activation_params", [])))


@rewrites((MS, "FusedGemm"))
def _fused_gemm(r: Rewriter, node) -> None:
    out = node.output[0]
    gemm_out = r.fresh(f"{node.name}_output_0" if node.name else f"{out}/gemm")
    kept = {k: v for k, v in attrs(node).items() if not k.startswith("activation")}
    r.add("Gemm", node.input, gemm_out, node.name or f"{out}/Gemm", **kept)
    params = [p for p in (attr(node, "activation_alpha", None),
                          attr(node, "activation_beta", None)) if p is not None]
    r.activation(node, gemm_out, out, params)


@rewrites((MS, "FusedMatMul"))
def _fused_matmul(r: Rewriter, node) -> None:
    """alpha * op(A) @ op(B), op transposing the last two axes when transA / transB."""
    if attr(node, "transBatchA", 0) or attr(node, "transBatchB", 0):
        raise UnsupportedOpError(f"FusedMatMul node {node.name!r} transposes batch axes, "
                                 f"which onnx-cam does not rewrite. {HINT}")
    out, base = node.output[0], node.name or node.output[0]
    operands = []
    for name, flag in zip(node.input[:2], ("transA", "transB")):
        if attr(node, flag, 0):
            rank = _rank(r, name)
            perm = [*range(rank - 2), rank - 1, rank - 2]
            name = r.add("Transpose", [name], r.fresh(f"{name}/transposed"),
                         f"{base}/{flag}", perm=perm)
        operands.append(name)
    alpha = float(attr(node, "alpha", 1.0))
    product = out if alpha == 1.0 else r.fresh(f"{base}_output_0")
    r.add("MatMul", operands, product, base)
    if alpha != 1.0:
        r.add("Mul", [product, r.const(f"{base}/alpha", np.float32(alpha))], out, f"{base}/alpha")


def _rank(r: Rewriter, name: str) -> int:
    """The rank of `name`, from ONNX shape inference over the nodes rewritten so far."""
    if name not in r.ranks:
        prefix = onnx.ModelProto()
        prefix.CopyFrom(r.model)
        del prefix.graph.node[:]
        del prefix.graph.value_info[:]
        prefix.graph.node.extend(r.nodes)
        try:
            inferred = shape_inference.infer_shapes(prefix).graph
        except Exception:  # noqa: BLE001 - the rank stays unknown and is refused below
            inferred = prefix.graph
        for value in (*inferred.input, *inferred.value_info, *inferred.output):
            if value.type.tensor_type.HasField("shape"):
                r.ranks[value.name] = len(value.type.tensor_type.shape.dim)
        r.ranks.update({t.name: len(t.dims) for t in r.graph.initializer})
    if name not in r.ranks:
        raise UnsupportedModelError(f"The rank of {name!r} (a transposed FusedMatMul operand) "
                                    f"cannot be inferred. {HINT}")
    return r.ranks[name]


def _biased(r: Rewriter, node, base: str) -> str:
    """The op's input plus its bias input, when it has one (BiasGelu, FastGelu)."""
    x = node.input[0]
    if len(node.input) > 1 and node.input[1]:
        x = r.add("Add", [x, node.input[1]], r.fresh(f"{base}/biased"), f"{base}/bias")
    return x


@rewrites((MS, "Gelu"), (MS, "BiasGelu"))
def _gelu(r: Rewriter, node) -> None:
    """x * 0.5 * (1 + erf(x / sqrt(2)))."""
    base = node.name or node.output[0]
    x = _biased(r, node, base)
    scaled = r.add("Mul", [x, r.const(f"{base}/c", np.float32(1 / math.sqrt(2)))],
                   r.fresh(f"{base}/scaled"), f"{base}/scale")
    erf = r.add("Erf", [scaled], r.fresh(f"{base}/erf"), f"{base}/Erf")
    _half_x_one_plus(r, base, x, erf, node.output[0])


@rewrites((MS, "FastGelu"))
def _fast_gelu(r: Rewriter, node) -> None:
    """x * 0.5 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))."""
    base = node.name or node.output[0]
    x = _biased(r, node, base)
    cube = r.add("Mul", [x, r.add("Mul", [x, x], r.fresh(f"{base}/x2"), f"{base}/square")],
                 r.fresh(f"{base}/x3"), f"{base}/cube")
    inner = r.add("Add", [x, r.add("Mul", [cube, r.const(f"{base}/k", np.float32(0.044715))],
                                   r.fresh(f"{base}/kx3"), f"{base}/scale_cube")],
                  r.fresh(f"{base}/inner"), f"{base}/inner")
    scaled = r.add("Mul", [inner, r.const(f"{base}/c", np.float32(math.sqrt(2 / math.pi)))],
                   r.fresh(f"{base}/scaled"), f"{base}/scale")
    tanh = r.add("Tanh", [scaled], r.fresh(f"{base}/tanh"), f"{base}/Tanh")
    _half_x_one_plus(r, base, x, tanh, node.output[0])


def _half_x_one_plus(r: Rewriter, base: str, x: str, t: str, out: str) -> None:
    """out = 0.5 * x * (1 + t)"""
    one_plus = r.add("Add", [t, r.const(f"{base}/one", np.float32(1))],
                     r.fresh(f"{base}/one_plus"), f"{base}/one_plus")
    half_x = r.add("Mul", [x, r.const(f"{base}/half", np.float32(0.5))],
                   r.fresh(f"{base}/half_x"), f"{base}/half_x")
    r.add("Mul", [half_x, one_plus], out, base)


@rewrites((MS, "QuickGelu"))
def _quick_gelu(r: Rewriter, node) -> None:
    """x * sigmoid(alpha * x)."""
    base = node.name or node.output[0]
    x = node.input[0]
    scaled = r.add("Mul", [x, r.const(f"{base}/alpha", np.float32(attr(node, "alpha", 1.702)))],
                   r.fresh(f"{base}/scaled"), f"{base}/scale")
    gate = r.add("Sigmoid", [scaled], r.fresh(f"{base}/gate"), f"{base}/Sigmoid")
    r.add("Mul", [x, gate], node.output[0], base)


@rewrites((MS, "SkipLayerNormalization"))
def _skip_layer_norm(r: Rewriter, node) -> None:
    """LayerNormalization(input + skip + bias) * gamma + beta over the last axis; the fourth
    output, when used, is the sum."""
    base = node.name or node.output[0]
    if any(name and r.consumers.get(name) for name in node.output[1:3]):
        raise UnsupportedOpError(f"SkipLayerNormalization node {node.name!r} exposes its mean "
                                 f"or inverse standard deviation, which onnx-cam does not "
                                 f"rewrite. {HINT}")
    inputs = list(node.input) + [""] * (5 - len(node.input))
    exposed = node.output[3] if len(node.output) > 3 and node.output[3] else None
    sums = [(inputs[:2], "skip")] + ([([inputs[4]], "bias")] if inputs[4] else [])
    total = None
    for i, (terms, what) in enumerate(sums):
        last = i == len(sums) - 1
        total = r.add("Add", ([total] if total else []) + terms,
                      exposed if last and exposed else r.fresh(f"{base}/{what}_sum"),
                      f"{base}/{what}")
    norm_inputs = [total, inputs[2]] + ([inputs[3]] if inputs[3] else [])
    r.add("LayerNormalization", norm_inputs, node.output[0], base, axis=-1,
          epsilon=float(attr(node, "epsilon", 1e-12)))
