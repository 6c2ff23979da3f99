"""Module names for bare files from torch's dynamo exporter, read from its node metadata.

torch.onnx.export(..., dynamo=True) records on every node the module path it came from, under
the metadata key ``pkg.torch.onnx.name_scopes``: the Python list of the enclosing module names,
root first, then the FX node's own name (``['', 'layer4', 'layer4.1', 'layer4.1.relu',
'relu_15']``). A module's output is the one tensor its nodes compute that nodes outside it
read (or the graph returns); a module whose nodes hand several tensors out is left unnamed,
except a one-node module called several times (a shared ReLU), which names its last call's
output, as the converter's layer map does. A graph in which some node has no name scopes (a
tool rewrote part of it) gets no names: a module's output could no longer be told.
"""

from __future__ import annotations

import ast

import onnx

NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"


def module_outputs(proto: onnx.ModelProto) -> dict[str, str]:
    """{module path: the tensor it outputs} from the nodes' name scopes; {} without them."""
    graph = proto.graph
    scopes = [_modules(node) for node in graph.node]
    if not any(scopes) or None in scopes:
        return {}  # no scopes, or nodes a later tool rewrote without them: outputs unknown
    made_in: dict[str, set[str]] = {}     # tensor -> modules of the node that computes it
    made_at: dict[str, int] = {}          # tensor -> index of the node that computes it
    for index, (node, modules) in enumerate(zip(graph.node, scopes)):
        for out in node.output:
            made_in[out], made_at[out] = set(modules), index
    leaving: dict[str, set[str]] = {}     # module -> the tensors it hands out
    calls: dict[str, list[bool]] = {}     # module -> per node: a one-node call?
    for node, modules in zip(graph.node, scopes):
        for module in modules:
            own = [name for name in node.input if module in made_in.get(name, ())]
            calls.setdefault(module, []).append(not own)
    for node, modules in zip(graph.node, scopes):
        for name in node.input:
            for module in made_in.get(name, set()) - set(modules):
                leaving.setdefault(module, set()).add(name)
    for name in (o.name for o in graph.output):
        for module in made_in.get(name, ()):
            leaving.setdefault(module, set()).add(name)
    return {module: max(tensors, key=made_at.__getitem__)
            for module, tensors in leaving.items()
            if len(tensors) == 1 or all(calls[module])}


def _modules(node: onnx.NodeProto) -> list[str] | None:
    """The module paths enclosing `node` (root and the FX node's own name left out); None
    when the node carries no readable name scopes."""
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES_KEY:
            try:
                names = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                return None
            if isinstance(names, list) and all(isinstance(n, str) for n in names):
                return [n for n in names[:-1] if n]
            return None
    return None
