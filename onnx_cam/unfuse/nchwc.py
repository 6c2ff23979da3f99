"""NCHWc layout ops (com.microsoft.nchwc) of graphs saved at ORT_ENABLE_ALL, as standard ops.

An NCHWc tensor becomes a plain (N, C, H, W) tensor: only the Conv weights, stored in the
blocked order of this machine's CPU kernels, are put back in OIHW order, and the channels ONNX
Runtime added to fill whole blocks are dropped. The block size is asked of ONNX Runtime itself
(one tiny session), as such a file is only valid on a CPU with the block size it was written
for (ONNX Runtime warns so when saving it).
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ..errors import UnsupportedModelError, UnsupportedOpError
from . import HINT, NCHWC, NCHWC_HINT, Rewriter, attr, attrs, rewrites

SUFFIX = "_nchwc"  # ONNX Runtime names an NCHWc node after its original output + "_nchwc"


@rewrites((NCHWC, "ReorderInput"))
def _reorder_input(r: Rewriter, node) -> None:
    source, out = node.input[0], node.output[0]
    if attr(node, "channels_last", 0):
        r.add("Transpose", [source], out, node.name or f"{out}/Transpose", perm=[0, 3, 1, 2])
    else:
        r.renamed[out] = source
    r.blocked[out] = Channels(None, None)


@rewrites((NCHWC, "ReorderOutput"))
def _reorder_output(r: Rewriter, node) -> None:
    source, out = node.input[0], node.output[0]
    channels = r.blocked.get(source, Channels(None, None))
    count = len(channels.real) if channels.real is not None else channels.padded
    if count is not None and count != attr(node, "channels", count):
        raise UnsupportedModelError(
            f"ReorderOutput node {node.name!r} keeps {attr(node, 'channels', count)} of "
            f"{count} channels onnx-cam counted as the model's. {NCHWC_HINT}")
    if attr(node, "channels_last", 0):
        r.add("Transpose", [source], out, node.name or f"{out}/Transpose", perm=[0, 2, 3, 1])
    elif source not in r.reordered and source not in r.outputs:
        r.reordered.add(source)
        r.renamed[source] = out      # the blocked tensor takes the original tensor's name
    else:
        r.add("Identity", [source], out, node.name or f"{out}/Identity")


@rewrites((NCHWC, "MaxPool"), (NCHWC, "AveragePool"), (NCHWC, "GlobalAveragePool"),
           (NCHWC, "GlobalMaxPool"))
def _nchwc_pool(r: Rewriter, node) -> None:
    base = node.name.removesuffix(SUFFIX)
    out = _nchwc_output(r, node, base)
    r.add(node.op_type, [node.input[0]], out, f"{base}/{node.op_type}", **attrs(node))
    r.blocked[node.output[0]] = r.blocked.get(node.input[0], Channels(None, None))


@rewrites((NCHWC, "Upsample"))
def _nchwc_upsample(r: Rewriter, node) -> None:
    """Integer scales: nearest (asymmetric, so each output reads input[i // scale]) or
    linear with the node's coordinate transformation, as Resize."""
    base = node.name.removesuffix(SUFFIX)
    mode = attr(node, "mode", "nearest")
    transform = attr(node, "coordinate_transformation_mode", "asymmetric")
    if mode not in ("nearest", "linear") or (mode == "nearest" and transform != "asymmetric"):
        raise UnsupportedOpError(f"NCHWc Upsample node {node.name!r} uses mode {mode!r} with "
                                 f"{transform!r} coordinates, which onnx-cam does not "
                                 f"rewrite. {HINT}")
    scales = r.const(f"{base}/scales", np.asarray(attr(node, "scales", []), np.float32))
    extra = {"nearest_mode": "floor"} if mode == "nearest" else {}
    r.add("Resize", [node.input[0], "", scales], _nchwc_output(r, node, base),
          f"{base}/Resize", mode=mode, coordinate_transformation_mode=transform, **extra)
    r.blocked[node.output[0]] = r.blocked.get(node.input[0], Channels(None, None))


@rewrites((NCHWC, "Conv"))
def _nchwc_conv(r: Rewriter, node) -> None:
    """act(Conv(X, W, B) + Sum), with W put back from the blocked order into OIHW."""
    base = node.name.removesuffix(SUFFIX) or node.output[0]
    kind = attr(node, "activation", "")
    inputs = list(node.input) + [""] * (4 - len(node.input))
    x, w, bias, summed = inputs[:4]
    group = attr(node, "group", 1)
    weights = _unblock(r.weight(w, "NCHWc Conv weight"), block_size(),
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
          **{**attrs(node, drop=("activation", "activation_params")), "group": group})
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
        r.activation(node, total, out, list(attr(node, "activation_params", [])))
    r.blocked[node.output[0]] = channels


@dataclass(frozen=True)
class Channels:
    """The channels of an NCHWc tensor: `padded` in all (a multiple of the block; None when
    not known), of which `real` are the model's (None: all of them). The rewritten graph
    holds the real ones only."""

    padded: int | None
    real: np.ndarray | None

    def same(self, other: Channels) -> bool:
        mine = self.real if self.real is not None else self.padded
        theirs = other.real if other.real is not None else other.padded
        return np.array_equal(mine, theirs) if mine is not None else theirs is None


def _real_channels(r: Rewriter, node, weights, biases, group: int):
    """The NCHWc Conv's weights, bias and group without the channels ONNX Runtime added to
    fill whole blocks (zero filters and bias), and the channels of its output.

    The filters of the input's padding channels must be zero (they are dropped). An output
    channel is the model's if its filter, its bias or the tensor added to it (Sum) is
    nonzero; the last block's trailing zero filters with zero bias are ONNX Runtime's, as
    (sliced off) they also are in every conv reading them, checked there.
    """
    block, padded = block_size(), weights.shape[0]
    source = r.blocked.get(node.input[0])
    real_in = source.real if source is not None else None
    added = r.blocked.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if group == 1 and real_in is not None:
        dropped = np.setdiff1d(np.arange(weights.shape[1]), real_in)
        if np.any(weights[:, dropped]):
            raise UnsupportedModelError(
                f"NCHWc Conv node {node.name!r} reads channels of its input that no filter of "
                f"the model computes. {NCHWC_HINT}")
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
    channels = Channels(padded, real)
    if added is not None and not channels.same(added):
        raise UnsupportedModelError(
            f"NCHWc Conv node {node.name!r} adds tensors with different channels. "
            f"{NCHWC_HINT}")
    return weights, biases, group, channels


def standard_op_channels(r: Rewriter, node) -> Channels:
    """The channels of a standard op's output when it reads NCHWc tensors: those of its
    inputs for element-wise ops, their concatenation for Concat along the channels."""
    inputs = [r.blocked[name] for name in node.input if name in r.blocked]
    if node.op_type == "Concat" and attr(node, "axis", 0) == 1 and len(inputs) == len(
            node.input):
        if all(c.real is None for c in inputs):
            padded = [c.padded for c in inputs]
            return Channels(None if None in padded else sum(padded), None)
        if None not in [c.padded for c in inputs]:
            offsets = np.cumsum([0] + [c.padded for c in inputs[:-1]])
            return Channels(sum(c.padded for c in inputs), np.concatenate(
                [(c.real if c.real is not None else np.arange(c.padded)) + offset
                 for c, offset in zip(inputs, offsets)]))
    elif node.op_type != "Concat" and all(c.same(inputs[0]) for c in inputs):
        return inputs[0]
    raise UnsupportedModelError(
        f"Node {node.name!r} ({node.op_type}) combines NCHWc tensors in a way onnx-cam cannot "
        f"follow. {NCHWC_HINT}")


def _nchwc_output(r: Rewriter, node, base: str) -> str:
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
            f"of {block} channels: the file was optimised on another kind of CPU. {NCHWC_HINT}")
    k = len(kernel)
    if blocked_input:
        w = blocked.reshape(out_c // block, in_c // block, *kernel, block, block)
        w = w.transpose(0, k + 3, 1, k + 2, *range(2, k + 2))  # (Ob, bo, Ib, bi, *kernel)
    else:
        w = blocked.reshape(out_c // block, in_c, *kernel, block)
        w = w.transpose(0, k + 2, *range(1, k + 2))            # (Ob, bo, I, *kernel)
    return np.ascontiguousarray(w.reshape(blocked.shape))


@functools.cache
def block_size() -> int:
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
            f"was optimised on another kind of CPU. {NCHWC_HINT}")
    return int(np.flatnonzero(reordered[0] == 2)[0])
