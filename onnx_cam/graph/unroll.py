"""Loops whose trip count the prepared graph fixes, unrolled into it so the op rules apply.

tf2onnx writes a Keras GRU or SimpleRNN as a `Loop` (a TensorFlow while loop): a trip count,
the sequence read from the enclosing graph one step per iteration (Gather at a counter), the
state carried from one iteration to the next, and each step's output stacked. Once the
input's spatial shape is fixed the trip count is a constant, so the loop is replaced by one
copy of its body per iteration (tensors `<name>/onnx_cam_step<i>`), each copy reading the
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
#: in the name of every tensor that holds one iteration's value (never offered as a layer)
STEP = "/onnx_cam_step"


def unroll_loops(graph: gs.Graph, has_rule: Callable[[str], bool],
                 fold: Callable[[gs.Graph], object]) -> bool:
    """Unroll every Loop and Scan `obstacle` lets through; `fold` folds the graph's
    constants. True when anything changed."""
    unrolled = [(_unroll_loop if node.op == "Loop" else _unroll_scan)(graph, node)
                for node in list(graph.nodes)
                if node.op in ("Loop", "Scan") and obstacle(node, has_rule) is None]
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


def obstacle(node: gs.Node, has_rule: Callable[[str], bool]) -> str | None:
    """Why the Loop or Scan `node` cannot be unrolled, None when it can; the text completes
    'Cannot differentiate Loop node X: ...'."""
    fix = ("Export the model with a fixed sequence length (keras.Input((T, C)) with T given), "
           "or explain a layer above the loop")
    body = node.attrs["body"]
    if node.op == "Loop":
        why, count = _trip_count(node, fix)
    else:
        why, count = _scan_length(node, fix)
    if why is not None:
        return why
    if count * len(body.nodes) > MAX_UNROLLED_NODES:
        return (f"unrolled, its {count} iterations of {len(body.nodes)} nodes would exceed "
                f"the {MAX_UNROLLED_NODES} nodes onnx-cam builds. Export the model with a "
                "shorter fixed sequence length, or explain a layer above the loop")
    nested = next((n for n in body.nodes if n.op in SUBGRAPH_OPS), None)
    if nested is not None:
        return f"its body holds a {nested.op} node ({_label(nested)!r}), which is not unrolled"
    data = _data_dependent(node)
    if node.op == "Loop" and body.outputs[0].name in data:
        return ("whether it runs another iteration depends on the values it computes. "
                "onnx-cam unrolls loops whose iteration count is fixed")
    missing = next((n for n in body.nodes if not has_rule(n.op)
                    and any(t.name in data for t in n.inputs)
                    and any(is_float(o.dtype) for o in n.outputs if o.dtype is not None)), None)
    if missing is not None:
        return (f"its body holds op {missing.op} (node {_label(missing)!r}), which has no "
                "gradient rule. Explain a layer above the loop")
    return None


def _trip_count(loop: gs.Node, fix: str) -> tuple[str | None, int]:
    trips = loop.inputs[0] if loop.inputs else None
    if trips is None or not trips.name:
        return f"it has no trip count (a while loop). {fix}", 0
    if not isinstance(trips, gs.Constant):
        return f"its trip count {trips.name!r} is computed at run time. {fix}", 0
    count = int(np.asarray(trips.values))
    if count < 1:
        return f"its trip count is {count}, so it never runs its body", 0
    cond = loop.inputs[1] if len(loop.inputs) > 1 else None
    if cond is not None and cond.name and not (
            isinstance(cond, gs.Constant) and bool(np.asarray(cond.values))):
        return f"its initial condition {cond.name!r} is not a constant true. {fix}", 0
    return None, count


def _scan_length(scan: gs.Node, fix: str) -> tuple[str | None, int]:
    first = scan.inputs[len(scan.inputs) - scan.attrs["num_scan_inputs"]]
    axes = scan.attrs.get("scan_input_axes", [0])
    shape = first.shape
    length = shape[axes[0] % len(shape)] if shape is not None else None
    if not isinstance(length, int):
        return f"the length of its scanned input {first.name!r} is known only at run time. " \
               f"{fix}", 0
    if length < 1:
        return f"its scanned input {first.name!r} is empty", 0
    return None, length


def _label(node: gs.Node) -> str:
    """The node's name, else its first output's (exporters may leave body nodes unnamed)."""
    return node.name or node.outputs[0].name


def _data_dependent(node: gs.Node) -> set[str]:
    """Body tensors that depend on a value not known when the graph is prepared: a carried
    value whose initial value is not a constant, a scanned slice, or a tensor of the
    enclosing graph."""
    body = node.attrs["body"]
    if node.op == "Loop":
        carried_in, initial = body.inputs[2:], node.inputs[2:]
        carried_out = body.outputs[1:1 + len(carried_in)]
        seeds = set()
    else:
        states = len(node.inputs) - node.attrs["num_scan_inputs"]
        carried_in, initial = body.inputs[:states], node.inputs[:states]
        carried_out = body.outputs[:states]
        seeds = {t.name for t in body.inputs[states:]}
    local = {t.name for t in body.inputs} | {o.name for n in body.nodes for o in n.outputs}
    seeds |= {t.name for t, init in zip(carried_in, initial) if not isinstance(init, gs.Constant)}
    while True:  # a carried value becomes data when the body makes it from data
        data = set(seeds)
        for inner in body.nodes:  # topologically sorted
            if any(t.name in data or (isinstance(t, gs.Variable) and t.name
                                      and t.name not in local) for t in inner.inputs):
                data.update(o.name for o in inner.outputs)
        grown = seeds | {i.name for i, o in zip(carried_in, carried_out) if o.name in data}
        if grown == seeds:
            return data
        seeds = grown


def _copy_body(graph: gs.Graph, body: gs.Graph, tensors: dict, i: int, gathers: list) -> list:
    """Append iteration i's copy of `body`, its inputs given by `tensors` (body name ->
    tensor); returns the copy's outputs."""
    for node in body.nodes:
        outs = [gs.Variable(f"{o.name}{STEP}{i}", dtype=o.dtype) if o.name
                else gs.Variable.empty() for o in node.outputs]
        tensors.update((o.name, new) for o, new in zip(node.outputs, outs) if o.name)
        ins = [tensors.get(t.name, t) if t.name else t for t in node.inputs]
        copy = gs.Node(node.op, f"{_label(node)}{STEP}{i}", dict(node.attrs), ins, outs,
                       domain=node.domain)
        graph.nodes.append(copy)
        if node.op == "Gather":
            gathers.append(copy)
    return [tensors.get(t.name, t) for t in body.outputs]


def _replace(graph: gs.Graph, node: gs.Node, finals: list, state: list, stacks: list,
             steps: list[list], axes: list[int]) -> None:
    """Remove `node`; its final-state outputs become Identities of `state`, its scan outputs
    the steps stacked (Unsqueeze + Concat) along each one's axis."""
    node.inputs.clear()
    node.outputs.clear()
    graph.nodes.remove(node)
    for final, value in zip(finals, state):
        graph.nodes.append(gs.Node("Identity", f"{final.name}/onnx_cam_final", {}, [value],
                                   [final]))
    for out, values, axis in zip(stacks, steps, axes):
        where = gs.Constant(f"{out.name}/onnx_cam_axis", np.array([axis], np.int64))
        rows = []
        for i, step in enumerate(values):
            row = gs.Variable(f"{out.name}{STEP}{i}", dtype=out.dtype)
            graph.nodes.append(gs.Node("Unsqueeze", f"{row.name}/onnx_cam_row", {},
                                       [step, where], [row]))
            rows.append(row)
        graph.nodes.append(gs.Node("Concat", f"{out.name}/onnx_cam_stack", {"axis": axis},
                                   rows, [out]))


def _unroll_loop(graph: gs.Graph, loop: gs.Node):
    """Replace `loop` by copies of its body; returns what unroll_loops checks after folding:
    (name, trip count, each iteration's condition but the last's, the copied Gathers)."""
    body = loop.attrs["body"]
    trips = int(np.asarray(loop.inputs[0].values))
    counter, _, *carried_in = body.inputs
    n_carried = len(carried_in)
    state = list(loop.inputs[2:])
    steps: list[list] = [[] for _ in body.outputs[1 + n_carried:]]
    conds, gathers = [], []
    true = gs.Constant(f"{loop.name}/onnx_cam_true", np.array(True))
    for i in range(trips):
        tensors = {counter.name: gs.Constant(f"{loop.name}/onnx_cam_iteration{i}",
                                             np.array(i, np.int64)),
                   body.inputs[1].name: true}
        tensors.update((t.name, s) for t, s in zip(carried_in, state))
        results = _copy_body(graph, body, tensors, i, gathers)
        if i < trips - 1:
            conds.append(results[0])
        state = results[1:1 + n_carried]
        for values, step in zip(steps, results[1 + n_carried:]):
            values.append(step)
    _replace(graph, loop, loop.outputs[:n_carried], state, loop.outputs[n_carried:], steps,
             [0] * len(steps))
    return loop.name, trips, conds, gathers


def _unroll_scan(graph: gs.Graph, scan: gs.Node):
    """Replace `scan` (opset 9+) by copies of its body, each reading one position of every
    scanned input (a Gather, made a Split after folding) in its direction; returns what
    unroll_loops checks after folding (no conditions)."""
    body = scan.attrs["body"]
    m = scan.attrs["num_scan_inputs"]
    n_states = len(scan.inputs) - m
    n_outs = len(body.outputs) - n_states
    in_axes = scan.attrs.get("scan_input_axes", [0] * m)
    in_back = scan.attrs.get("scan_input_directions", [0] * m)
    out_axes = scan.attrs.get("scan_output_axes", [0] * n_outs)
    out_back = scan.attrs.get("scan_output_directions", [0] * n_outs)
    _, length = _scan_length(scan, "")
    state = list(scan.inputs[:n_states])
    steps: list[list] = [[] for _ in range(n_outs)]
    gathers: list[gs.Node] = []
    for i in range(length):
        tensors = {t.name: s for t, s in zip(body.inputs, state)}
        for j, (source, inner) in enumerate(zip(scan.inputs[n_states:], body.inputs[n_states:])):
            position = length - 1 - i if in_back[j] else i
            piece = gs.Variable(f"{inner.name}{STEP}{i}", dtype=source.dtype)
            index = gs.Constant(f"{piece.name}/onnx_cam_position", np.array(position, np.int64))
            gather = gs.Node("Gather", f"{piece.name}/onnx_cam_read", {"axis": in_axes[j]},
                             [source, index], [piece])
            graph.nodes.append(gather)
            gathers.append(gather)
            tensors[inner.name] = piece
        results = _copy_body(graph, body, tensors, i, gathers)
        state = results[:n_states]
        for values, step in zip(steps, results[n_states:]):
            values.append(step)
    steps = [values[::-1] if back else values for values, back in zip(steps, out_back)]
    _replace(graph, scan, scan.outputs[:n_states], state, scan.outputs[n_states:], steps,
             out_axes)
    return scan.name, length, [], gathers


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
        pieces = [gs.Variable(f"{name}{STEP}{k}", dtype=data.dtype) for k in range(size)]
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
