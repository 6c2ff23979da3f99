"""Put a model's nodes in topological order (ONNX requires it; some tools write them unsorted).

onnxruntime's float16 converter with keep_io_types=True appends its input Casts at the end of
the node list; ONNX Runtime sorts the graph itself and runs the file, so onnx-cam does too.
Only a real cycle is refused.
"""

from __future__ import annotations

import heapq

import onnx

from ..errors import ModelLoadError


def sorted_model(proto: onnx.ModelProto) -> onnx.ModelProto:
    """`proto` if its graph, every subgraph and every function are in topological order,
    else a sorted copy. Nodes already in order keep it (a stable topological sort)."""
    if not _sort_all(proto, apply=False):
        return proto
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    _sort_all(copy, apply=True)
    return copy


def _sort_all(proto: onnx.ModelProto, apply: bool) -> bool:
    changed = _sort(proto.graph.node, f"graph {proto.graph.name!r}", apply)
    for function in proto.functions:
        changed |= _sort(function.node, f"function {function.name!r}", apply)
    return changed


def _defined(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    return names | {s.values.name for s in graph.sparse_initializer}


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    graphs = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            graphs.extend(attr.graphs)
    return graphs


def _free_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from the scopes around it."""
    local = _defined(graph) | {o for n in graph.node for o in n.output}
    read = {o.name for o in graph.output}
    for node in graph.node:
        read.update(node.input)
        for sub in _subgraphs(node):
            read |= _free_names(sub)
    return read - local - {""}


def _sort(nodes, where: str, apply: bool) -> bool:
    """Whether `nodes` (with their subgraphs) are out of order; sorts them if `apply`."""
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    needs: list[set[int]] = []
    changed = False
    for node in nodes:
        reads = set(node.input)
        for sub in _subgraphs(node):
            changed |= _sort(sub.node, f"subgraph {sub.name!r}", apply)
            reads |= _free_names(sub)
        needs.append({producer[name] for name in reads if name in producer})
    users: list[list[int]] = [[] for _ in needs]
    for i, deps in enumerate(needs):
        for dep in deps:
            users[dep].append(i)
    waiting = [len(deps) for deps in needs]
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for user in users[i]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    if len(order) < len(needs):
        stuck = [nodes[i].name or nodes[i].op_type for i, count in enumerate(waiting) if count]
        raise ModelLoadError(
            f"The nodes of {where} form a cycle (each of {stuck[:6]} waits, directly or not, "
            "for its own output), which no runtime can execute: the file is damaged or was "
            "edited by hand. Re-export the model.")
    if order == sorted(order):
        return changed
    if not apply:
        return True
    copies = []
    for i in order:
        copy = onnx.NodeProto()
        copy.CopyFrom(nodes[i])
        copies.append(copy)
    del nodes[:]
    nodes.extend(copies)
    return True
