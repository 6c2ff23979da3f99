"""Shape arithmetic that reads the batch size, made static where the values do not need it.

Exporters compute many Reshape targets from Shape(x): `x.reshape(x.shape[0], C, -1)`, a
ShuffleNet channel shuffle, LeViT's attention. With the batch axis symbolic, constant folding
cannot evaluate them and ONNX shape inference loses the static sizes of the other axes (the
-1 beside a symbolic N), though they are static at run time; gradient rules then refuse
("ReduceMean over a dynamic axis").

Here each integer tensor computed from shapes is evaluated exactly as a * N + c per element
(N the batch size, a and c integer arrays), through the ops shape arithmetic uses. A shape
input that does not depend on N (a = 0) becomes the constant c. A Reshape target whose entries
depend on N becomes a constant too: the entry that is N at the input's batch axis becomes 0
(copy that axis), and one other N-dependent entry -1 (the size that keeps the element count,
which is what the computed entry must be); any other target is left as it is.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

# the inputs of each op that hold shapes, axes or positions, never data
SHAPE_INPUTS = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "Pad": (1, 2, 3),
    "Resize": (1, 2, 3), "ConstantOfShape": (0,), "Squeeze": (1,), "Unsqueeze": (1,),
    "ReduceMean": (1,), "ReduceSum": (1,), "ReduceMax": (1,), "ReduceMin": (1,),
    "Split": (1,), "Range": (0, 1, 2), "OneHot": (1,), "TopK": (1,),
}

Affine = tuple[np.ndarray, np.ndarray]  # (a, c): value = a * N + c, elementwise


def pin_batch_free_shapes(graph: gs.Graph, batch: str) -> bool:
    """Replace computed shape inputs by constants where exact (see the module docstring);
    `batch` is the symbolic name of the batch axis. True when anything changed."""
    values: dict[str, Affine] = {}
    changed = False
    for node in graph.nodes:  # topologically sorted
        evaluate = _OPS.get(node.op)
        if evaluate is not None:
            try:
                result = evaluate(node, [_value(t, values) for t in node.inputs], batch)
            except (TypeError, ValueError, IndexError):
                result = None  # an unusual use of the op: its value stays unknown
            if result is not None:
                values[node.outputs[0].name] = result
        for i in SHAPE_INPUTS.get(node.op, ()):
            if i >= len(node.inputs) or not isinstance(node.inputs[i], gs.Variable):
                continue
            tensor = node.inputs[i]
            if tensor.name not in values or not tensor.inputs:
                continue
            pinned = _pinned(node, i, values[tensor.name], batch)
            if pinned is not None:
                dtype = np.dtype(tensor.dtype) if tensor.dtype is not None else np.int64
                node.inputs[i] = gs.Constant(f"{tensor.name}/onnx_cam_static",
                                             pinned.astype(dtype))
                changed = True
    return changed


def _pinned(node: gs.Node, i: int, value: Affine, batch: str) -> np.ndarray | None:
    a, c = value
    if not a.any():
        return c
    if node.op != "Reshape" or a.ndim != 1 or node.attrs.get("allowzero", 0):
        return None
    data = node.inputs[0].shape
    target = c.copy()
    dynamic = [k for k in range(len(a)) if a[k]]
    for k in list(dynamic):
        if (a[k], c[k]) == (1, 0) and data is not None and k < len(data) and data[k] == batch:
            target[k] = 0              # copy the input's batch axis
            dynamic.remove(k)
    static = [target[k] for k in range(len(a)) if not a[k]]
    if len(dynamic) > 1 or (dynamic and -1 in static):
        return None
    for k in dynamic:
        target[k] = -1                 # the one size that keeps the element count
    return target


def _value(tensor, values: dict[str, Affine]) -> Affine | None:
    if isinstance(tensor, gs.Constant):
        c = np.asarray(tensor.values)
        if c.dtype.kind not in "iu":
            return None
        c = c.astype(np.int64)
        return np.zeros_like(c), c
    return values.get(tensor.name)


def _known(args, *positions) -> bool:
    return all(p < len(args) and args[p] is not None for p in positions)


def _constant(value: Affine | None) -> np.ndarray | None:
    return value[1] if value is not None and not value[0].any() else None


def _shape(node, args, batch):
    shape = node.inputs[0].shape
    if shape is None:
        return None
    start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
    dims = list(shape)[start:end]
    if not all(isinstance(d, int) or d == batch for d in dims):
        return None
    a = np.array([1 if d == batch else 0 for d in dims], np.int64)
    return a, np.array([0 if d == batch else d for d in dims], np.int64)


def _gather(node, args, batch):
    indices = _constant(args[1]) if _known(args, 0, 1) else None
    if indices is None or node.attrs.get("axis", 0) != 0:
        return None
    a, c = args[0]
    return np.take(a, indices, axis=0), np.take(c, indices, axis=0)


def _slice(node, args, batch):
    if not _known(args, 0, 1, 2) or args[0][0].ndim != 1:
        return None
    bounds = [_constant(args[i]) if i < len(args) and node.inputs[i].name else None
              for i in (1, 2, 3, 4)]
    if bounds[0] is None or bounds[1] is None or len(bounds[0]) != 1:
        return None
    if bounds[2] is not None and list(bounds[2]) not in ([0], [-1]):
        return None
    step = int(bounds[3][0]) if bounds[3] is not None else 1
    part = slice(int(bounds[0][0]), int(bounds[1][0]), step)
    return args[0][0][part], args[0][1][part]


def _concat(node, args, batch):
    if not all(arg is not None for arg in args):
        return None
    axis = node.attrs.get("axis", 0)
    return (np.concatenate([a for a, _ in args], axis),
            np.concatenate([c for _, c in args], axis))


def _reshaped(node, args, batch):
    """Unsqueeze, Squeeze, Reshape, Flatten, Identity, Cast: the same elements re-shaped."""
    out = node.outputs[0].shape
    if not _known(args, 0) or out is None or not all(isinstance(d, int) for d in out):
        return None
    if node.op == "Cast" and np.dtype(node.outputs[0].dtype).kind not in "iu":
        return None
    a, c = args[0]
    return a.reshape(out), c.reshape(out)


def _add(node, args, batch):
    if not _known(args, 0, 1):
        return None
    sign = -1 if node.op == "Sub" else 1
    return args[0][0] + sign * args[1][0], args[0][1] + sign * args[1][1]


def _mul(node, args, batch):
    if not _known(args, 0, 1):
        return None
    (a1, c1), (a2, c2) = args
    if a1.any() and a2.any():
        return None  # N squared
    if a1.any():
        (a1, c1), (a2, c2) = (a2, c2), (a1, c1)
    return c1 * a2, c1 * c2


def _div(node, args, batch):
    divisor = _constant(args[1]) if _known(args, 0, 1) else None
    if divisor is None or not divisor.all():
        return None
    a, c = args[0]
    if a.any():  # exact only when both parts divide
        if (a % divisor).any() or (c % divisor).any():
            return None
        return a // divisor, c // divisor
    quotient = np.abs(c) // np.abs(divisor) * np.sign(c) * np.sign(divisor)  # truncated
    return np.zeros_like(quotient), quotient


_OPS = {"Shape": _shape, "Gather": _gather, "Slice": _slice, "Concat": _concat,
        "Unsqueeze": _reshaped, "Squeeze": _reshaped, "Reshape": _reshaped,
        "Flatten": _reshaped, "Identity": _reshaped, "Cast": _reshaped,
        "Add": _add, "Sub": _add, "Mul": _mul, "Div": _div}
