"""ONNX Runtime's contrib ops in an optimised graph, rewritten as the standard ops they fuse.

A graph saved with SessionOptions.optimized_model_filepath at ORT_ENABLE_EXTENDED holds
com.microsoft ops (FusedConv, FusedGemm, FusedMatMul, the Gelu family,
SkipLayerNormalization); at ORT_ENABLE_ALL also NCHWc layout ops (com.microsoft.nchwc), whose
weights are stored in the blocked order of this machine's CPU kernels. Neither ONNX shape
inference nor the gradient rules know them. Each is replaced here by the standard ops that
compute the same values (blocked weights put back in OIHW order, layout reorders dropped), so
everything downstream works unchanged; ONNX Runtime fuses the rewritten graph again when it
runs it. One module per domain: contrib.py (com.microsoft), nchwc.py (com.microsoft.nchwc).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import UnsupportedModelError, UnsupportedOpError

MS, NCHWC = "com.microsoft", "com.microsoft.nchwc"
HINT = ("Save the graph at ORT_ENABLE_BASIC (or explain the model as exported); ONNX Runtime "
        "applies its other optimisations when it runs it.")
NCHWC_HINT = ("Save the graph at ORT_ENABLE_EXTENDED instead (no NCHWc layouts, which are "
              "specific to the CPU they were written on); ONNX Runtime applies them when it "
              "runs it.")


def unfuse(proto: onnx.ModelProto) -> onnx.ModelProto:
    """`proto` with every ONNX Runtime contrib op rewritten in standard ops (unchanged if none)."""
    if not any(n.domain in (MS, NCHWC) for n in proto.graph.node):
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    Rewriter(out).run()
    return out


class Rewriter:
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
        self.blocked: dict[str, nchwc.Channels] = {}
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
                    channels = nchwc.standard_op_channels(self, node)
                    self.blocked.update({name: channels for name in node.output})
                self.nodes.append(node)
                continue
            rewrite = REWRITES.get((node.domain, node.op_type))
            if rewrite is None:
                raise UnsupportedOpError(
                    f"Node {node.name!r} is ONNX Runtime's {node.domain} {node.op_type}, which "
                    f"onnx-cam does not rewrite in standard ONNX ops. {HINT}")
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
                                        f"onnx-cam needs it stored in the model. {HINT}")
        return numpy_helper.to_array(self.weights[name])

    def activation(self, node, x: str, output: str, params: list[float]) -> str:
        """`output` = the activation `node` fused, applied to `x`."""
        kind = attr(node, "activation", "")
        base = node.name.removesuffix(nchwc.SUFFIX) or output
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
                                 f"{kind!r}, which onnx-cam does not rewrite. {HINT}")



def attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def attrs(node: onnx.NodeProto, drop=()) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name not in drop}


REWRITES = {}


def rewrites(*keys):
    def add(fn):
        for key in keys:
            REWRITES[key] = fn
        return fn
    return add


from . import contrib, nchwc  # noqa: E402, F401  (they register their rewrites)
