"""ONNX Runtime's contrib ops in an optimised graph, rewritten as the standard ops they fuse.

A graph saved with SessionOptions.optimized_model_filepath at ORT_ENABLE_EXTENDED holds
com.microsoft ops (FusedConv, FusedGemm, FusedMatMul, the Gelu family,
SkipLayerNormalization); at ORT_ENABLE_ALL also NCHWc layout ops (com.microsoft.nchwc), whose
weights are stored in the blocked order of this machine's CPU kernels. Neither ONNX shape
inference nor the gradient rules know them. Each is replaced here by the standard ops that
compute the same values (blocked weights put back in OIHW order, layout reorders dropped), so
everything downstream works unchanged; ONNX Runtime fuses the rewritten graph again when it
runs it. The block size is asked of ONNX Runtime itself (one tiny session), as the file is only
valid on a CPU with the block size it was written for (ONNX Runtime warns so when saving it).
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper, shape_inference

from .errors import UnsupportedModelError, UnsupportedOpError

MS, NCHWC = "com.microsoft", "com.microsoft.nchwc"
_SUFFIX = "_nchwc"  # ONNX Runtime names an NCHWc node after its original output + "_nchwc"
_HINT = ("Save the graph at ORT_ENABLE_BASIC (or explain the model as exported); ONNX Runtime "
         "applies its other optimisations when it runs it.")
_NCHWC_HINT = ("Save the graph at ORT_ENABLE_EXTENDED instead (no NCHWc layouts, which are "
               "specific to the CPU they were written on); ONNX Runtime applies them when it "
               "runs it.")


def unfuse(proto: onnx.ModelProto) -> onnx.ModelProto:
    """`proto` with every ONNX Runtime contrib op rewritten in standard ops (unchanged if none)."""
    if not any(n.domain in (MS, NCHWC) for n in proto.graph.node):
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    _Rewriter(out).run()
    return out


class _Rewriter:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = graph = model.graph
        self.ranks: dict[str, int] = {}
        self.weights = {t.name: t for t in graph.initializer}
        self.used = ({t.name for t in graph.input} | set(self.weights)
                     | {name for n in graph.node for name in (*n.input, *n.output)})
        self.nodes: list[onnx.NodeProto] = []
        self.renamed: dict[str, str] = {}   # tensor -> the name it is read by from now on
        # NCHWc tensors -> their channels as ONNX Runtime pads them to whole blocks
        self.blocked: dict[str, _Channels] = {}
        self.reordered: set[str] = set()    # NCHWc tensors renamed after their ReorderOutput

    def run(self) -> None:
        consumers: dict[str, int] = {}
        for node in self.graph.node:
            for name in node.input:
                consumers[name] = consumers.get(name, 0) + 1
        self.outputs = {o.name for o in self.graph.output}
        for name in self.outputs:
            consumers[name] = consumers.get(name, 0) + 1
        self.consumers = consumers
        for node in self.graph.node:
            if node.domain not in (MS, NCHWC):
                # ONNX Runtime leaves some standard ops (Concat, Sum, Relu) on NCHWc tensors
                if any(name in self.blocked for name in node.input):
                    channels = _standard_op_channels(self, node)
                    self.blocked.update({name: channels for name in node.output})
                self.nodes.append(node)
                continue
            rewrite = _REWRITES.get((node.domain, node.op_type))
            if rewrite is None:
                raise UnsupportedOpError(
                    f"Node {node.name!r} is ONNX Runtime's {node.domain} {node.op_type}, which "
                    f"onnx-cam does not rewrite in standard ONNX ops. {_HINT}")
            rewrite(self, node)
        for node in self.nodes:
            for i, name in enumerate(node.input):
                node.input[i] = self._final(name)
            for i, name in enumerate(node.output):
                node.output[i] = self._final(name)
        read = {name for n in self.nodes for name in n.input}
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)
        kept = [t for t in self.graph.initializer if t.name in read]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)
        del self.graph.value_info[:]

    def _final(self, name: str) -> str:
        while name in self.renamed:
            name = self.renamed[name]
        return name

    # ---- building --------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name

    def const(self, base: str, value) -> str:
        name = self.fresh(base)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def add(self, op: str, inputs, output: str, name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=self.fresh(name)
                                           if name in self.used else name, **attrs))
        self.used.add(name)
        return output

    def weight(self, name: str, what: str) -> np.ndarray:
        if name not in self.weights:
            raise UnsupportedModelError(f"The {what} {name!r} is computed at run time; "
                                        f"onnx-cam needs it stored in the model. {_HINT}")
        return numpy_helper.to_array(self.weights[name])

    def activation(self, node, x: str, output: str, params: list[float]) -> str:
        """`output` = the activation `node` fused, applied to `x`."""
        kind = _attr(node, "activation", "")
        base = node.name.removesuffix(_SUFFIX) or output
        where = f"{base}/{kind}"
        if kind in ("Relu", "Sigmoid", "Tanh", "HardSwish"):
            return self.add(kind, [x], output, where)
        if kind == "LeakyRelu":
            return self.add(kind, [x], output, where, alpha=params[0] if params else 0.01)
        if kind == "HardSigmoid":
            alpha, beta = params if len(params) == 2 else (0.2, 0.5)
            return self.add(kind, [x], output, where, alpha=alpha, beta=beta)
        if kind == "Clip" and len(params) == 2:
            low = self.const(f"{base}/clip_min", np.float32(params[0]))
            high = self.const(f"{base}/clip_max", np.float32(params[1]))
            return self.add(kind, [x, low, high], output, where)
        raise UnsupportedOpError(f"Node {node.name!r} ({node.op_type}) fuses the activation "
                                 f"{kind!r}, which onnx-cam does not rewrite. {_HINT}")

    def block_size(self) -> int:
        return _nchwc_block_size()


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _attrs(node: onnx.NodeProto, drop=()) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name not in drop}


_REWRITES = {}


def _rewrites(*keys):
    def add(fn):
        for key in keys:
            _REWRITES[key] = fn
        return fn
    return add


# ---- com.microsoft ---------------------------------------------------------------------------
@_rewrites((MS, "FusedConv"))
def _fused_conv(r: _Rewriter, node) -> None:
    """act(Conv(X, W, B) + Z), Z optional."""
    out = node.output[0]
    # the Conv's own output under the name the exporter gave it (node name + "_output_0")
    conv_out = r.fresh(f"{node.name}_output_0" if node.name else f"{out}/conv")
    attrs = _attrs(node, drop=("activation", "activation_params"))
    r.add("Conv", [n for n in node.input[:3] if n], conv_out, node.name or f"{out}/Conv",
          **attrs)
    summed = conv_out
    if len(node.input) > 3 and node.input[3]:
        summed = r.add("Add", [conv_out, node.input[3]], r.fresh(f"{conv_out}/sum"),
                       f"{node.name}/Add")
    r.activation(node, summed, out, list(_attr(node, "activation_params", [])))


@_rewrites((MS, "FusedGemm"))
def _fused_gemm(r: _Rewriter, node) -> None:
    out = node.output[0]
    gemm_out = r.fresh(f"{node.name}_output_0" if node.name else f"{out}/gemm")
    attrs = {k: v for k, v in _attrs(node).items() if not k.startswith("activation")}
    r.add("Gemm", node.input, gemm_out, node.name or f"{out}/Gemm", **attrs)
    params = [p for p in (_attr(node, "activation_alpha", None),
                          _attr(node, "activation_beta", None)) if p is not None]
    r.activation(node, gemm_out, out, params)


@_rewrites((MS, "FusedMatMul"))
def _fused_matmul(r: _Rewriter, node) -> None:
    """alpha * op(A) @ op(B), op transposing the last two axes when transA / transB."""
    if _attr(node, "transBatchA", 0) or _attr(node, "transBatchB", 0):
        raise UnsupportedOpError(f"FusedMatMul node {node.name!r} transposes batch axes, "
                                 f"which onnx-cam does not rewrite. {_HINT}")
    out, base = node.output[0], node.name or node.output[0]
    operands = []
    for name, flag in zip(node.input[:2], ("transA", "transB")):
        if _attr(node, flag, 0):
            rank = _rank(r, name)
            perm = [*range(rank - 2), rank - 1, rank - 2]
            name = r.add("Transpose", [name], r.fresh(f"{name}/transposed"),
                         f"{base}/{flag}", perm=perm)
        operands.append(name)
    alpha = float(_attr(node, "alpha", 1.0))
    product = out if alpha == 1.0 else r.fresh(f"{base}_output_0")
    r.add("MatMul", operands, product, base)
    if alpha != 1.0:
        r.add("Mul", [product, r.const(f"{base}/alpha", np.float32(alpha))], out, f"{base}/alpha")


def _rank(r: _Rewriter, name: str) -> int:
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
                                    f"cannot be inferred. {_HINT}")
    return r.ranks[name]


def _biased(r: _Rewriter, node, base: str) -> str:
    """The op's input plus its bias input, when it has one (BiasGelu, FastGelu)."""
    x = node.input[0]
    if len(node.input) > 1 and node.input[1]:
        x = r.add("Add", [x, node.input[1]], r.fresh(f"{base}/biased"), f"{base}/bias")
    return x


@_rewrites((MS, "Gelu"), (MS, "BiasGelu"))
def _gelu(r: _Rewriter, node) -> None:
    """x * 0.5 * (1 + erf(x / sqrt(2)))."""
    base = node.name or node.output[0]
    x = _biased(r, node, base)
    scaled = r.add("Mul", [x, r.const(f"{base}/c", np.float32(1 / math.sqrt(2)))],
                   r.fresh(f"{base}/scaled"), f"{base}/scale")
    erf = r.add("Erf", [scaled], r.fresh(f"{base}/erf"), f"{base}/Erf")
    _half_x_one_plus(r, base, x, erf, node.output[0])


@_rewrites((MS, "FastGelu"))
def _fast_gelu(r: _Rewriter, node) -> None:
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


def _half_x_one_plus(r: _Rewriter, base: str, x: str, t: str, out: str) -> None:
    """out = 0.5 * x * (1 + t)"""
    one_plus = r.add("Add", [t, r.const(f"{base}/one", np.float32(1))],
                     r.fresh(f"{base}/one_plus"), f"{base}/one_plus")
    half_x = r.add("Mul", [x, r.const(f"{base}/half", np.float32(0.5))],
                   r.fresh(f"{base}/half_x"), f"{base}/half_x")
    r.add("Mul", [half_x, one_plus], out, base)


@_rewrites((MS, "QuickGelu"))
def _quick_gelu(r: _Rewriter, node) -> None:
    """x * sigmoid(alpha * x)."""
    base = node.name or node.output[0]
    x = node.input[0]
    scaled = r.add("Mul", [x, r.const(f"{base}/alpha", np.float32(_attr(node, "alpha", 1.702)))],
                   r.fresh(f"{base}/scaled"), f"{base}/scale")
    gate = r.add("Sigmoid", [scaled], r.fresh(f"{base}/gate"), f"{base}/Sigmoid")
    r.add("Mul", [x, gate], node.output[0], base)


@_rewrites((MS, "SkipLayerNormalization"))
def _skip_layer_norm(r: _Rewriter, node) -> None:
    """LayerNormalization(input + skip + bias) * gamma + beta over the last axis; the fourth
    output, when used, is the sum."""
    base = node.name or node.output[0]
    if any(name and r.consumers.get(name) for name in node.output[1:3]):
        raise UnsupportedOpError(f"SkipLayerNormalization node {node.name!r} exposes its mean "
                                 f"or inverse standard deviation, which onnx-cam does not "
                                 f"rewrite. {_HINT}")
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
          epsilon=float(_attr(node, "epsilon", 1e-12)))


# ---- com.microsoft.nchwc ---------------------------------------------------------------------
# An NCHWc tensor becomes a plain (N, C, H, W) tensor: only the weights need reordering.
@_rewrites((NCHWC, "ReorderInput"))
def _reorder_input(r: _Rewriter, node) -> None:
    source, out = node.input[0], node.output[0]
    if _attr(node, "channels_last", 0):
        r.add("Transpose", [source], out, node.name or f"{out}/Transpose", perm=[0, 3, 1, 2])
    else:
        r.renamed[out] = source
    r.blocked[out] = _Channels(None, None)


@_rewrites((NCHWC, "ReorderOutput"))
def _reorder_output(r: _Rewriter, node) -> None:
    source, out = node.input[0], node.output[0]
    channels = r.blocked.get(source, _Channels(None, None))
    count = len(channels.real) if channels.real is not None else channels.padded
    if count is not None and count != _attr(node, "channels", count):
        raise UnsupportedModelError(
            f"ReorderOutput node {node.name!r} keeps {_attr(node, 'channels', count)} of "
            f"{count} channels onnx-cam counted as the model's. {_NCHWC_HINT}")
    if _attr(node, "channels_last", 0):
        r.add("Transpose", [source], out, node.name or f"{out}/Transpose", perm=[0, 2, 3, 1])
    elif source not in r.reordered and source not in r.outputs:
        r.reordered.add(source)
        r.renamed[source] = out      # the blocked tensor takes the original tensor's name
    else:
        r.add("Identity", [source], out, node.name or f"{out}/Identity")


@_rewrites((NCHWC, "MaxPool"), (NCHWC, "AveragePool"), (NCHWC, "GlobalAveragePool"),
           (NCHWC, "GlobalMaxPool"))
def _nchwc_pool(r: _Rewriter, node) -> None:
    base = node.name.removesuffix(_SUFFIX)
    out = _nchwc_output(r, node, base)
    r.add(node.op_type, [node.input[0]], out, f"{base}/{node.op_type}", **_attrs(node))
    r.blocked[node.output[0]] = r.blocked.get(node.input[0], _Channels(None, None))


@_rewrites((NCHWC, "Upsample"))
def _nchwc_upsample(r: _Rewriter, node) -> None:
    """Integer scales: nearest (asymmetric, so each output reads input[i // scale]) or
    linear with the node's coordinate transformation, as Resize."""
    base = node.name.removesuffix(_SUFFIX)
    mode = _attr(node, "mode", "nearest")
    transform = _attr(node, "coordinate_transformation_mode", "asymmetric")
    if mode not in ("nearest", "linear") or (mode == "nearest" and transform != "asymmetric"):
        raise UnsupportedOpError(f"NCHWc Upsample node {node.name!r} uses mode {mode!r} with "
                                 f"{transform!r} coordinates, which onnx-cam does not "
                                 f"rewrite. {_HINT}")
    scales = r.const(f"{base}/scales", np.asarray(_attr(node, "scales", []), np.float32))
    extra = {"nearest_mode": "floor"} if mode == "nearest" else {}
    r.add("Resize", [node.input[0], "", scales], _nchwc_output(r, node, base),
          f"{base}/Resize", mode=mode, coordinate_transformation_mode=transform, **extra)
    r.blocked[node.output[0]] = r.blocked.get(node.input[0], _Channels(None, None))


@_rewrites((NCHWC, "Conv"))
def _nchwc_conv(r: _Rewriter, node) -> None:
    """act(Conv(X, W, B) + Sum), with W put back from the blocked order into OIHW."""
    base = node.name.removesuffix(_SUFFIX) or node.output[0]
    kind = _attr(node, "activation", "")
    inputs = list(node.input) + [""] * (4 - len(node.input))
    x, w, bias, summed = inputs[:4]
    group = _attr(node, "group", 1)
    weights = _unblock(r.weight(w, "NCHWc Conv weight"), r.block_size(),
                       x in r.blocked and group == 1)
    biases = r.weight(bias, "NCHWc Conv bias") if bias else None
    weights, biases, group, channels = _real_channels(r, node, weights, biases, group)
    w_name = r.const(f"{base}/weight", weights)
    if biases is not None:
        bias = r.const(f"{base}/bias", biases)
    # the node's name is its original output: the Conv's own, or, when ONNX Runtime had fused
    # the activation before NCHWc (FusedConv), that activation's output
    names_activation = bool(kind) and base.rsplit("/", 1)[-1].startswith(kind)
    if not kind and not summed:
        conv_out = _nchwc_output(r, node, base)
    elif names_activation:
        conv_out = r.fresh(f"{base}/conv")
    else:
        conv_out = r.fresh(base)
    r.add("Conv", [x, w_name] + ([bias] if bias else []), conv_out, f"{base}/Conv",
          **{**_attrs(node, drop=("activation", "activation_params")), "group": group})
    total = conv_out
    if summed:
        total = r.add("Add", [conv_out, summed], node.output[0] if not kind
                      else r.fresh(f"{base}/sum"), f"{base}/Add")
    if kind:
        out = node.output[0]
        if names_activation:
            _nchwc_output(r, node, base)
        elif out not in r.outputs:  # ONNX Runtime's "reorder_token_<i>": say what it holds
            r.renamed[out] = r.fresh(f"{base}/{kind}")
        r.activation(node, total, out, list(_attr(node, "activation_params", [])))
    r.blocked[node.output[0]] = channels


@dataclass(frozen=True)
class _Channels:
    """The channels of an NCHWc tensor: `padded` in all (a multiple of the block; None when
    not known), of which `real` are the model's (None: all of them). The rewritten graph
    holds the real ones only."""

    padded: int | None
    real: np.ndarray | None

    def same(self, other: _Channels) -> bool:
        mine = self.real if self.real is not None else self.padded
        theirs = other.real if other.real is not None else other.padded
        return np.array_equal(mine, theirs) if mine is not None else theirs is None


def _real_channels(r: _Rewriter, node, weights, biases, group: int):
    """The NCHWc Conv's weights, bias and group without the channels ONNX Runtime added to
    fill whole blocks (zero filters and bias), and the channels of its output.

    The filters of the input's padding channels must be zero (they are dropped). An output
    channel is the model's if its filter, its bias or the tensor added to it (Sum) is
    nonzero; the last block's trailing zero filters with zero bias are ONNX Runtime's, as
    (sliced off) they also are in every conv reading them, checked there.
    """
    block, padded = r.block_size(), weights.shape[0]
    source = r.blocked.get(node.input[0])
    real_in = source.real if source is not None else None
    added = r.blocked.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if group == 1 and real_in is not None:
        dropped = np.setdiff1d(np.arange(weights.shape[1]), real_in)
        if np.any(weights[:, dropped]):
            raise UnsupportedModelError(
                f"NCHWc Conv node {node.name!r} reads channels of its input that no filter of "
                f"the model computes. {_NCHWC_HINT}")
        weights = weights[:, real_in]
    if group > 1:  # depthwise: the output's channels are the input's
        real = real_in
        if real is not None:
            weights, group = weights[real], len(real)
    else:
        used = np.flatnonzero(weights.reshape(padded, -1).any(axis=1)
                              | (biases != 0 if biases is not None else False))
        count = max(int(used[-1]) + 1 if len(used) else 0, padded - block + 1)
        if added is not None:
            count = max(count, len(added.real) if added.real is not None else padded)
        real = np.arange(count) if count < padded else None
        if real is not None:
            weights = weights[real]
    if real is not None and biases is not None:
        biases = biases[real]
    channels = _Channels(padded, real)
    if added is not None and not channels.same(added):
        raise UnsupportedModelError(
            f"NCHWc Conv node {node.name!r} adds tensors with different channels. "
            f"{_NCHWC_HINT}")
    return weights, biases, group, channels


def _standard_op_channels(r: _Rewriter, node) -> _Channels:
    """The channels of a standard op's output when it reads NCHWc tensors: those of its
    inputs for element-wise ops, their concatenation for Concat along the channels."""
    inputs = [r.blocked[name] for name in node.input if name in r.blocked]
    if node.op_type == "Concat" and _attr(node, "axis", 0) == 1 and len(inputs) == len(
            node.input):
        if all(c.real is None for c in inputs):
            padded = [c.padded for c in inputs]
            return _Channels(None if None in padded else sum(padded), None)
        if None not in [c.padded for c in inputs]:
            offsets = np.cumsum([0] + [c.padded for c in inputs[:-1]])
            return _Channels(sum(c.padded for c in inputs), np.concatenate(
                [(c.real if c.real is not None else np.arange(c.padded)) + offset
                 for c, offset in zip(inputs, offsets)]))
    elif node.op_type != "Concat" and all(c.same(inputs[0]) for c in inputs):
        return inputs[0]
    raise UnsupportedModelError(
        f"Node {node.name!r} ({node.op_type}) combines NCHWc tensors in a way onnx-cam cannot "
        f"follow. {_NCHWC_HINT}")


def _nchwc_output(r: _Rewriter, node, base: str) -> str:
    """The node's output, renamed to the tensor name its node name records when free."""
    out = node.output[0]
    if base not in r.used and base:
        r.used.add(base)
        r.renamed[out] = base
    return out


def _unblock(blocked: np.ndarray, block: int, blocked_input: bool) -> np.ndarray:
    """OIHW weights from ONNX Runtime's NCHWc filter order: OIHWBiBo when the Conv reads an
    NCHWc tensor with one group, else OIHWBo (NCHW input, or depthwise)."""
    out_c, in_c, *kernel = blocked.shape
    if out_c % block or (blocked_input and in_c % block):
        raise UnsupportedModelError(
            f"An NCHWc Conv weight of shape {blocked.shape} does not fit this CPU's NCHWc block "
            f"of {block} channels: the file was optimised on another kind of CPU. {_NCHWC_HINT}")
    k = len(kernel)
    if blocked_input:
        w = blocked.reshape(out_c // block, in_c // block, *kernel, block, block)
        w = w.transpose(0, k + 3, 1, k + 2, *range(2, k + 2))  # (Ob, bo, Ib, bi, *kernel)
    else:
        w = blocked.reshape(out_c // block, in_c, *kernel, block)
        w = w.transpose(0, k + 2, *range(1, k + 2))            # (Ob, bo, I, *kernel)
    return np.ascontiguousarray(w.reshape(blocked.shape))


@functools.cache
def _nchwc_block_size() -> int:
    """The channel block ONNX Runtime's NCHWc kernels use on this CPU: where it puts the second
    input channel of a filter it reorders as OIHWBo."""
    channels = 64
    weights = np.arange(channels * 2, dtype=np.float32).reshape(channels, 2, 1, 1) + 1
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = os.path.join(folder, "probe.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
        saved = onnx.load(options.optimized_model_filepath)
    reordered = [numpy_helper.to_array(t).ravel() for t in saved.graph.initializer
                 if t.dims and t.dims[0] == channels]
    if not any(n.domain == NCHWC for n in saved.graph.node) or not reordered:
        raise UnsupportedModelError(
            "The model holds NCHWc ops, which ONNX Runtime does not use on this CPU: the file "
            f"was optimised on another kind of CPU. {_NCHWC_HINT}")
    return int(np.flatnonzero(reordered[0] == 2)[0])
