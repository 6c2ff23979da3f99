"""Loops whose trip count the prepared graph fixes, unrolled into it so the op rules apply.

tf2onnx writes a Keras GRU or SimpleRNN as a `Loop` (a TensorFlow while loop): a trip count,
the sequence read from the enclosing graph one step per iteration (Gather at a counter), the
state carried from one iteration to the next, and each step's output stacked. Once the
input's spatial shape is fixed the trip count is a constant, so the loop is replaced by one
copy of its body per iteration (fresh tensor names `<name>/step<i>`), each copy reading the
previous one's carried values, the iteration number a constant, the scan outputs stacked
with Unsqueeze + Concat into the Loop's own output tensors. The existing rules then
differentiate it, exactly. After folding, each step's read of the sequence is a Gather of a
constant position; those of one tensor become one Split, so the gradient is a Concat of the
steps (a Gather rule per step would scatter into a whole sequence each time: T^2 work).

A Loop is left as it is (and refused by its gradient rule, only if a gradient must cross
it) when its trip count is computed at run time, when whether it continues depends on the
values it computes, when its body holds another subgraph or, on a differentiable path, an op
without a gradient rule, or when the unrolled graph would exceed MAX_UNROLLED_NODES.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import UnsupportedModelError
from .precision import is_float

#: body nodes times iterations beyond which a Loop is not unrolled (about 1,300 steps of a
#: Keras GRU, whose body has 30 nodes): preparing the graph, its gradient and the ONNX Runtime
#: session grows with the node count, to about 3 minutes for 1,024 GRU steps on 2 cores
#: (benchmarks/bench_unroll.py)
MAX_UNROLLED_NODES = 40_000
SUBGRAPH_OPS = frozenset({"Loop", "Scan", "If"})


def unroll_loops(graph: gs.Graph, has_rule: Callable[[str], bool],
                 fold: Callable[[gs.Graph], object]) -> bool:
    """Unroll every Loop `obstacle` lets through; `fold` folds the graph's constants. True
    when anything changed."""
    unrolled = [_unroll(graph, loop) for loop in list(graph.nodes)
                if loop.op == "Loop" and obstacle(loop, has_rule) is None]
    if not unrolled:
        return False
    fold(graph)
    for loop_name, trips, conds, _ in unrolled:
        for i, cond in enumerate(conds):
            if isinstance(cond, gs.Constant) and bool(np.asarray(cond.values)):
                continue
            how = ("stops" if isinstance(cond, gs.Constant)
                   else "may stop (its condition could not be evaluated)")
            raise UnsupportedModelError(
                f"Loop node {loop_name!r} {how} after iteration {i}, before its trip count "
                f"({trips}); onnx-cam unrolls loops that run their whole trip count (a "
                "sequence of fixed length). Export the model with a fixed sequence length.")
    _gathers_as_split(graph, [node for *_, gathers in unrolled for node in gathers])
    return True


def obstacle(loop: gs.Node, has_rule: Callable[[str], bool]) -> str | None:
    """Why `loop` cannot be unrolled, None when it can; the text completes 'Cannot
    differentiate Loop node X: ...'."""
    fix = ("Export the model with a fixed sequence length (keras.Input((T, C)) with T given), "
           "or explain a layer above the loop")
    trips = loop.inputs[0] if loop.inputs else None
    if trips is None or not trips.name:
        return f"it has no trip count (a while loop). {fix}"
    if not isinstance(trips, gs.Constant):
        return f"its trip count {trips.name!r} is computed at run time. {fix}"
    body = loop.attrs["body"]
    count = int(np.asarray(trips.values))
    if count < 1:
        return f"its trip count is {count}, so it never runs its body"
    if count * len(body.nodes) > MAX_UNROLLED_NODES:
        return (f"unrolled, its {count} iterations of {len(body.nodes)} nodes would exceed "
                f"the {MAX_UNROLLED_NODES} nodes onnx-cam builds. Export the model with a "
                "shorter fixed sequence length, or explain a layer above the loop")
    cond = loop.inputs[1] if len(loop.inputs) > 1 else None
    if cond is not None and cond.name and not (
            isinstance(cond, gs.Constant) and bool(np.asarray(cond.values))):
        return f"its initial condition {cond.name!r} is not a constant true. {fix}"
    nested = next((n for n in body.nodes if n.op in SUBGRAPH_OPS), None)
    if nested is not None:
        return f"its body holds a {nested.op} node ({_label(nested)!r}), which is not unrolled"
    data = _data_dependent(loop)
    if body.outputs[0].name in data:
        return ("whether it runs another iteration depends on the values it computes. "
                "onnx-cam unrolls loops whose iteration count is fixed")
    missing = next((n for n in body.nodes if not has_rule(n.op)
                    and any(t.name in data for t in n.inputs)
                    and any(is_float(o.dtype) for o in n.outputs if o.dtype is not None)), None)
    if missing is not None:
        return (f"its body holds op {missing.op} (node {_label(missing)!r}), which has no "
                "gradient rule. Explain a layer above the loop")
    return None


def _label(node: gs.Node) -> str:
    """The node's name, else its first output's (exporters may leave body nodes unnamed)."""
    return node.name or node.outputs[0].name


def _data_dependent(loop: gs.Node) -> set[str]:
    """Body tensors that depend on a value not known when the graph is prepared: a carried
    value whose initial value is not a constant, or a tensor of the enclosing graph."""
    body = loop.attrs["body"]
    carried_in = body.inputs[2:]
    carried_out = body.outputs[1:1 + len(carried_in)]
    initial = loop.inputs[2:]
    local = {t.name for t in body.inputs} | {o.name for n in body.nodes for o in n.outputs}
    seeds = {t.name for t, init in zip(carried_in, initial) if not isinstance(init, gs.Constant)}
    while True:  # a carried value becomes data when the body makes it from data
        data = set(seeds)
        for node in body.nodes:  # topologically sorted
            if any(t.name in data or (isinstance(t, gs.Variable) and t.name
                                      and t.name not in local) for t in node.inputs):
                data.update(o.name for o in node.outputs)
        grown = seeds | {i.name for i, o in zip(carried_in, carried_out) if o.name in data}
        if grown == seeds:
            return data
        seeds = grown


def _unroll(graph: gs.Graph, loop: gs.Node):
    """Replace `loop` by copies of its body; returns what unroll_loops checks after folding:
    (name, trip count, each iteration's condition but the last's, the copied Gathers)."""
    body = loop.attrs["body"]
    trips = int(np.asarray(loop.inputs[0].values))
    counter, _, *carried_in = body.inputs
    n_carried = len(carried_in)
    state = list(loop.inputs[2:])
    stacked: list[list] = [[] for _ in body.outputs[1 + n_carried:]]
    conds, gathers = [], []
    true = gs.Constant(f"{loop.name}/onnx_cam_true", np.array(True))
    for i in range(trips):
        tensors = {counter.name: gs.Constant(f"{loop.name}/onnx_cam_step{i}",
                                             np.array(i, np.int64)),
                   body.inputs[1].name: true}
        tensors.update((t.name, s) for t, s in zip(carried_in, state))
        for node in body.nodes:
            outs = [gs.Variable(f"{o.name}/step{i}", dtype=o.dtype) if o.name
                    else gs.Variable.empty() for o in node.outputs]
            tensors.update((o.name, new) for o, new in zip(node.outputs, outs) if o.name)
            ins = [tensors.get(t.name, t) if t.name else t for t in node.inputs]
            copy = gs.Node(node.op, f"{_label(node)}/step{i}", dict(node.attrs), ins, outs,
                           domain=node.domain)
            graph.nodes.append(copy)
            if node.op == "Gather":
                gathers.append(copy)
        results = [tensors.get(t.name, t) for t in body.outputs]
        if i < trips - 1:
            conds.append(results[0])
        state = results[1:1 + n_carried]
        for steps, step in zip(stacked, results[1 + n_carried:]):
            steps.append(step)
    finals, scans = loop.outputs[:n_carried], loop.outputs[n_carried:]
    loop.inputs.clear()
    loop.outputs.clear()
    graph.nodes.remove(loop)
    axis = gs.Constant(f"{loop.name}/onnx_cam_axis0", np.array([0], np.int64))
    for final, value in zip(finals, state):
        graph.nodes.append(gs.Node("Identity", f"{final.name}/onnx_cam_final", {}, [value],
                                   [final]))
    for out, steps in zip(scans, stacked):
        rows = []
        for i, step in enumerate(steps):
            row = gs.Variable(f"{out.name}/step{i}", dtype=out.dtype)
            graph.nodes.append(gs.Node("Unsqueeze", f"{row.name}/onnx_cam_row", {},
                                       [step, axis], [row]))
            rows.append(row)
        graph.nodes.append(gs.Node("Concat", f"{out.name}/onnx_cam_stack", {"axis": 0},
                                   rows, [out]))
    return loop.name, trips, conds, gathers


def _gathers_as_split(graph: gs.Graph, gathers: list[gs.Node]) -> None:
    """Gathers of one constant position each, of the same tensor along the same axis, as one
    Split into single positions, each Squeezed: the same values."""
    groups: dict[tuple[str, int], list[gs.Node]] = {}
    for node in gathers:
        if len(node.inputs) != 2 or not node.outputs:
            continue  # folded
        (data, index), shape = node.inputs, node.inputs[0].shape
        if (not isinstance(data, gs.Variable) or not isinstance(node.outputs[0], gs.Variable)
                or not isinstance(index, gs.Constant) or np.asarray(index.values).ndim != 0
                or shape is None):
            continue
        axis = node.attrs.get("axis", 0) % len(shape)
        if isinstance(shape[axis], int):
            groups.setdefault((data.name, axis), []).append(node)
    for (name, axis), nodes in groups.items():
        if len(nodes) < 2:
            continue
        data = nodes[0].inputs[0]
        size = data.shape[axis]
        pieces = [gs.Variable(f"{name}/onnx_cam_step{k}", dtype=data.dtype) for k in range(size)]
        sizes = gs.Constant(f"{name}/onnx_cam_ones", np.ones(size, np.int64))
        graph.nodes.append(gs.Node("Split", f"{name}/onnx_cam_steps", {"axis": axis},
                                   [data, sizes], pieces))
        axes = gs.Constant(f"{name}/onnx_cam_axis", np.array([axis], np.int64))
        for node in nodes:
            k = int(np.asarray(node.inputs[1].values)) % size
            out = node.outputs[0]
            node.inputs.clear()
            node.outputs.clear()
            graph.nodes.append(gs.Node("Squeeze", f"{out.name}/onnx_cam_squeeze", {},
                                       [pieces[k], axes], [out]))
