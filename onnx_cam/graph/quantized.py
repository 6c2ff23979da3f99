"""Quantised models (int8 QDQ, QOperator, dynamic quantisation): which integer tensors carry
a gradient, and which float tensors are the layers.

The gradient rules are in rules/quantize.py. A layer of a QDQ model is the dequantised tensor
(what the int8 model computes), named after the float tensor it quantises.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

# ops whose first output is integer yet differentiable: its values stand for real numbers
INTEGER_PATH_OPS = frozenset({"QuantizeLinear", "DynamicQuantizeLinear", "ConvInteger",
                              "MatMulInteger"})


def dequantized_sources(graph: gs.Graph) -> dict[str, gs.Variable]:
    """Per DequantizeLinear output that reads back a QuantizeLinear of a float tensor that
    only ever gets quantised: that float tensor (one DequantizeLinear per tensor)."""
    found: dict[str, gs.Variable] = {}
    seen: set[str] = set()
    for node in graph.nodes:
        if node.op != "DequantizeLinear" or not node.inputs[0].inputs:
            continue
        quantize = node.inputs[0].inputs[0]
        if quantize.op != "QuantizeLinear" or not quantize.inputs[0].inputs:
            continue
        source = quantize.inputs[0]
        if source.name not in seen and all(c.op == "QuantizeLinear" for c in source.outputs):
            seen.add(source.name)
            found[node.outputs[0].name] = source
    return found


def rescaling_steps(graph: gs.Graph) -> set[str]:
    """The float tensors of a dynamically quantised model between an integer accumulator and
    its dequantised result (ConvInteger -> Cast -> Mul by the scales -> Add the bias): not
    layers of their own."""
    steps: set[str] = set()
    for node in graph.nodes:
        if node.op not in ("ConvInteger", "MatMulInteger"):
            continue
        tensor = node.outputs[0]
        while len(tensor.outputs) == 1 and tensor.outputs[0].op in ("Cast", "Mul", "Add"):
            steps.add(tensor.name)
            tensor = tensor.outputs[0].outputs[0]
    return steps
