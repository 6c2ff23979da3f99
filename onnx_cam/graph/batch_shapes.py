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

The dynamo exporter writes `as_strided` (e.g. in an adaptive pooling) as a Gather on the
flattened tensor whose indices are Range(0, N) * K + offsets, K the size of one item: they
depend on N only through the item each row reads. Such index tensors are followed here as
p * n + q (n the index along their first axis); when p = K and 0 <= q < K the Gather reads
each item at the same offsets q, and becomes a Gather of the constant q along axis 1 of the
(N, K) view, exactly the same values for every batch size.
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

# ops whose output's shape is their shape input: shape inference sizes it when that input is
# built from the batch size read by Shape and constants
SIZED_BY_TARGET = frozenset({"Expand", "Tile", "ConstantOfShape"})

Affine = tuple[np.ndarray, np.ndarray]  # (a, c): value = a * N + c, elementwise
# (p, q), each shaped (1, *rest): value[n, ...] = p * n + q, n the index along the first axis
PerItem = tuple[np.ndarray, np.ndarray]


def resolve_batch_shapes(graph: gs.Graph, batch: str) -> bool:
    """Replace computed shape inputs by constants and per-item Gathers by constant ones where
    exact (see the module docstring); `batch` is the symbolic name of the batch axis. True
    when anything changed."""
    values: dict[str, Affine] = {}
    per_item: dict[str, PerItem] = {}
    changed = False
    for node in list(graph.nodes):  # topologically sorted
        args = [_value(t, values) for t in node.inputs]
        _record(values, _OPS.get(node.op), node, args, batch)
        _record(per_item, _PER_ITEM_OPS.get(node.op), node, args, per_item)
        if node.op == "Gather" and node.inputs[1].name in per_item:
            changed |= _gather_per_item(graph, node, per_item[node.inputs[1].name], batch)
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
            elif node.op in SIZED_BY_TARGET:
                changed |= _read_batch_size(graph, node, i, values[tensor.name], batch)
    return changed


def _record(table: dict, evaluate, node: gs.Node, args: list, context) -> None:
    if evaluate is None:
        return
    try:
        result = evaluate(node, args, context)
    except (TypeError, ValueError, IndexError):
        result = None  # an unusual use of the op: its value stays unknown
    if result is not None:
        table[node.outputs[0].name] = result


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


def _read_batch_size(graph: gs.Graph, node: gs.Node, i: int, value: Affine,
                     batch: str) -> bool:
    """A shape input whose entries are the batch size N or constants (timm's class token
    expanded to the batch: Where(Equal([N, -1, -1], -1), 1, [N, -1, -1])) rebuilt as
    Concat(Shape(input)[k:k+1] for N, constants), which ONNX shape inference follows."""
    a, c = value
    source = next((t for t in graph.inputs if batch in (t.shape or ())), None)
    if source is None or a.ndim != 1 or not all((x, y) == (1, 0) for x, y in zip(a, c) if x):
        return False
    name = f"{node.inputs[i].name}/onnx_cam_batch"
    size = gs.Variable(f"{name}/size", dtype=np.int64, shape=[1])
    k = list(source.shape).index(batch)
    graph.nodes.append(gs.Node("Shape", f"{name}/shape", {"start": k, "end": k + 1},
                               [source], [size]))
    parts = [size if x else gs.Constant(f"{name}/{j}", np.array([y], np.int64))
             for j, (x, y) in enumerate(zip(a, c))]
    target = gs.Variable(name, dtype=np.int64, shape=[len(a)])
    graph.nodes.append(gs.Node("Concat", name, {"axis": 0}, parts, [target]))
    node.inputs[i] = target
    return True


def _value(tensor, values: dict[str, Affine]) -> Affine | None:
    if isinstance(tensor, gs.Constant):
        c = np.asarray(tensor.values)
        if c.dtype.kind not in "iub":
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
    indices = _constant(args[1]) if _known(args, 1) else None
    if indices is None or node.attrs.get("axis", 0) != 0:
        return None
    if args[0] is None:  # sizes read from a shape known in part (a token count unknown yet)
        return _gathered_sizes(node.inputs[0], indices, batch)
    a, c = args[0]
    return np.take(a, indices, axis=0), np.take(c, indices, axis=0)


def _gathered_sizes(shape, indices: np.ndarray, batch: str) -> Affine | None:
    """Shape(x)[indices] where those sizes of x are known (static, or the batch)."""
    if len(shape.inputs) != 1 or shape.inputs[0].op != "Shape" or shape.inputs[0].attrs:
        return None
    dims = shape.inputs[0].inputs[0].shape
    if dims is None or ((indices < -len(dims)) | (indices >= len(dims))).any():
        return None
    picked = [dims[int(i)] for i in indices.reshape(-1)]
    if not all(isinstance(d, int) or d == batch for d in picked):
        return None
    a = np.array([1 if d == batch else 0 for d in picked], np.int64).reshape(indices.shape)
    return a, np.array([0 if d == batch else d for d in picked], np.int64).reshape(indices.shape)


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


def _range(node, args, per_item):
    """Range(0, N, 1): the item index n itself."""
    start, limit, delta = args
    if start is None or limit is None or delta is None or start[0].any() or delta[0].any():
        return None
    if start[1] != 0 or delta[1] != 1 or limit[0] != 1 or limit[1] != 0:
        return None
    return np.ones(1, np.int64), np.zeros(1, np.int64)


def _broadcastable(k: np.ndarray, rank: int) -> bool:
    """A constant that combines with a per-item tensor of `rank` axes without changing its
    first axis."""
    return k.ndim < rank or (k.ndim == rank and k.shape[0] == 1)


def _per_item_arith(node, args, per_item):
    names = [t.name for t in node.inputs]
    indexed = [per_item.get(name) for name in names]
    if node.op == "Add" and all(v is not None for v in indexed):
        return indexed[0][0] + indexed[1][0], indexed[0][1] + indexed[1][1]
    if sum(v is not None for v in indexed) != 1:
        return None
    i = 0 if indexed[0] is not None else 1
    p, q = indexed[i]
    k = _constant(args[1 - i])
    if k is None or not _broadcastable(k, p.ndim):
        return None
    if node.op == "Mul":
        return p * k, q * k
    if node.op == "Add":
        return p + np.zeros_like(k), q + k
    return None


def _per_item_reshaped(node, args, per_item):
    """Unsqueeze at axes other than the first, Cast to an integer type."""
    value = per_item.get(node.inputs[0].name)
    if value is None:
        return None
    p, q = value
    if node.op == "Cast":
        return value if np.dtype(node.outputs[0].dtype).kind in "iu" else None
    axes = _constant(args[1]) if len(args) > 1 else None
    if axes is None:
        return None
    rank = p.ndim + len(axes)
    axes = tuple(int(a) % rank for a in axes)
    if 0 in axes:
        return None
    return np.expand_dims(p, axes), np.expand_dims(q, axes)


def _gather_per_item(graph: gs.Graph, node: gs.Node, value: PerItem, batch: str) -> bool:
    """Gather(Reshape(x, [-1]), p * n + q) with p = K, the size of one item of x, as
    Gather(Reshape(x, [0, K]), q, axis=1)."""
    flat = node.inputs[0]
    if node.attrs.get("axis", 0) != 0 or len(flat.inputs) != 1:
        return False
    flatten = flat.inputs[0]
    source = flatten.inputs[0] if flatten.op == "Reshape" else None
    target = flatten.inputs[1] if source is not None else None
    if not isinstance(target, gs.Constant) or list(np.asarray(target.values)) != [-1]:
        return False
    shape = source.shape
    if shape is None or shape[0] != batch or not all(isinstance(d, int) for d in shape[1:]):
        return False
    size = int(np.prod(shape[1:], dtype=np.int64))
    p, q = value
    full = np.broadcast_shapes(p.shape, q.shape)
    offsets = np.broadcast_to(q, full)[0]
    if not (p == size).all() or offsets.min() < 0 or offsets.max() >= size:
        return False
    items = gs.Variable(f"{flat.name}/onnx_cam_items", dtype=flat.dtype,
                        shape=[batch, size])
    graph.nodes.append(gs.Node("Reshape", f"{node.name}/onnx_cam_items", {},
                               [source, gs.Constant(f"{flat.name}/onnx_cam_item_shape",
                                                    np.array([0, size], np.int64))], [items]))
    out = node.outputs[0]
    node.outputs.clear()
    graph.nodes.append(gs.Node("Gather", f"{node.name}/onnx_cam_per_item", {"axis": 1},
                               [items, gs.Constant(f"{node.name}/onnx_cam_offsets",
                                                   np.ascontiguousarray(offsets))], [out]))
    return True


def _equal(node, args, batch):
    """Equal, exact where both sides are constants, or one is N (>= 1) and the other < 1."""
    if not _known(args, 0, 1):
        return None
    a1, a2, c1, c2 = np.broadcast_arrays(args[0][0], args[1][0], args[0][1], args[1][1])
    unequal = ((a1 == 1) & (c1 == 0) & (a2 == 0) & (c2 < 1)) | (
        (a2 == 1) & (c2 == 0) & (a1 == 0) & (c1 < 1))
    if ((a1 != 0) | (a2 != 0))[~unequal].any():
        return None
    equal = (c1 == c2) & ~unequal
    return np.zeros_like(c1), equal.astype(np.int64)


def _where(node, args, batch):
    condition = _constant(args[0]) if _known(args, 0, 1, 2) else None
    if condition is None:
        return None
    chosen = condition.astype(bool)
    return (np.where(chosen, args[1][0], args[2][0]), np.where(chosen, args[1][1], args[2][1]))


_PER_ITEM_OPS = {"Range": _range, "Mul": _per_item_arith, "Add": _per_item_arith,
                 "Unsqueeze": _per_item_reshaped, "Cast": _per_item_reshaped}
_OPS = {"Shape": _shape, "Gather": _gather, "Slice": _slice, "Concat": _concat,
        "Unsqueeze": _reshaped, "Squeeze": _reshaped, "Reshape": _reshaped,
        "Flatten": _reshaped, "Identity": _reshaped, "Cast": _reshaped,
        "Add": _add, "Sub": _add, "Mul": _mul, "Div": _div, "Equal": _equal,
        "Where": _where}
