"""Patch grids of transformers: which tensors hold a grid of positions, and in what layout.

Every tensor reached from the model input (N, C, *spatial) is described axis by axis as the
factors it holds: the batch, channels, or a part of spatial axis k (its index along k is
`stride * i + ...`, the mixed-radix digits a Reshape splits an axis into). Convolutions start
a fresh description of their output; Reshape / Flatten / Squeeze / Unsqueeze regroup the
factors, Transpose permutes them, a Concat of tokens before a flattened grid counts prefix
tokens (class, distillation, register tokens), a Slice of them drops some, a MatMul over
the channels keeps the rest, and any other op whose output has the shape of a described
input keeps its description (LayerNorm, residual Adds, activations: attention mixes
positions but keeps the layout).

A tensor is a grid layer when, besides the batch and one channel axis (which may also hold
finer spatial digits: Swin's patch merging), it holds the coarsest digit of every spatial
axis either on one axis each (Swin's (N, H, W, C): `Layer.axes`), or together on one token
axis in row-major order after `prefix` tokens (ViT's (N, 1 + H W, C): a TokenGrid).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np
import onnx_graphsurgeon as gs

from .errors import LayerError

BATCH, CHANNEL = "n", "c"
# a factor: (label, stride, size): label BATCH, CHANNEL, or the spatial axis k it indexes
Factor = tuple
# an axis: (prefix tokens, factors in row-major order); the size is prefix + prod(sizes)
Axis = tuple
FRESH_OPS = frozenset({"Conv", "ConvTranspose", "ConvInteger"})
# ops on (N, C, *spatial) whose output is (N, C, *spatial) again, with new spatial sizes
SPATIAL_RESHAPING = frozenset({"MaxPool", "AveragePool", "LpPool", "Resize", "Pad",
                               "BatchNormalization", "InstanceNormalization"})
LAYOUT_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
SKIPPED = frozenset({"Shape", "Size", "Gather", "GatherElements", "GatherND", "Expand",
                     "ScatterND", "ScatterElements", "Einsum", "Loop", "Scan", "If", "TopK",
                     "DepthToSpace", "SpaceToDepth", "ReverseSequence", "NonZero", "ArgMax",
                     "ArgMin", "ConstantOfShape", "Range"})


@dataclass(frozen=True)
class TokenGrid:
    """How a token tensor becomes (N, C, *grid): `roles` says, per axis of the tensor, whether
    it is the batch (0), the channels (1), the tokens (2) or a unit axis (None); the first
    `prefix` tokens are dropped and the rest are the grid in row-major order."""

    roles: tuple
    prefix: int
    grid: tuple

    def view(self, builder, tensor, channels: int) -> gs.Variable:
        """`tensor` as (N, C, *grid): the prefix tokens dropped, channels first."""
        units = [i for i, r in enumerate(self.roles) if r is None]
        kept = [r for r in self.roles if r is not None]
        if units:
            tensor = builder.op("Squeeze", [tensor, builder.ints(units)])
        perm = [kept.index(r) for r in range(3)]
        if perm != [0, 1, 2]:
            tensor = builder.op("Transpose", [tensor], {"perm": perm})
        if self.prefix:
            tensor = builder.op("Slice", [tensor, builder.ints([self.prefix]),
                                          builder.ints([np.iinfo(np.int64).max]),
                                          builder.ints([2])])
        out = builder.op("Reshape", [tensor, builder.ints([0, channels, *self.grid])])
        out.shape = [tensor.shape[0] if tensor.shape else "N", channels, *self.grid]
        return out


    def token_masks(self, masks: np.ndarray) -> np.ndarray:
        """Masks (m, *grid) as masks of the tensor with its batch first (m, ...), broadcast
        over the channels; the prefix tokens are kept (1)."""
        m = len(masks)
        flat = np.concatenate([np.ones((m, self.prefix), masks.dtype), masks.reshape(m, -1)],
                              axis=1)
        return flat.reshape([m] + [flat.shape[1] if r == 2 else 1 for r in self.roles[1:]])


@dataclass(frozen=True)
class GridLayer:
    """A grid found for one tensor: (N, C, *grid) as `axes` (Layer.axes) or `tokens`."""

    shape: tuple                  # (N, C, *grid)
    axes: tuple | None = None     # a transpose of (N, C, *grid), unit axes None
    tokens: TokenGrid | None = None


def _fresh(shape) -> tuple[Axis, ...]:
    return ((0, ((BATCH, 0, shape[0]),)), (0, ((CHANNEL, 0, shape[1]),)),
            *((0, ((k, 1, s),)) for k, s in enumerate(shape[2:])))


def _is_fresh(desc: tuple[Axis, ...]) -> bool:
    return (len(desc) >= 3 and all(p == 0 and len(f) == 1 for p, f in desc)
            and desc[0][1][0][0] == BATCH and desc[1][1][0][0] == CHANNEL
            and all(f[0][0] == k and f[0][1] == 1 for k, (_, f) in enumerate(desc[2:])))


def _size(factor: Factor):
    return factor[2]


def _merged(factors) -> tuple:
    """Unit factors dropped; neighbours of one spatial axis (coarse then fine), or two channel
    factors, merged into one."""
    out: list = []
    for f in factors:
        if isinstance(_size(f), int) and _size(f) == 1:
            continue
        if out:
            label, stride, size = out[-1]
            if label == f[0] == CHANNEL:
                out[-1] = (CHANNEL, 0, size * f[2])
                continue
            if isinstance(label, int) and label == f[0] and stride == f[1] * f[2]:
                out[-1] = (label, f[1], size * f[2])
                continue
        out.append(f)
    return tuple(out)


def _regroup(desc: tuple[Axis, ...], shape) -> tuple[Axis, ...] | None:
    """The description after a reshape to `shape`, or None when it cannot be followed."""
    queue: list = []
    for prefix, factors in desc:
        factors = tuple(f for f in factors if _size(f) != 1)
        if prefix:
            queue.append((prefix, factors))      # a token axis with prefix: kept whole
        else:
            queue.extend(factors)
    out = []
    for dim in shape:
        if not isinstance(dim, (int, str)) or (isinstance(dim, int) and dim < 1):
            return None
        if dim == 1:
            out.append((0, ()))
            continue
        group: list = []
        have = 1
        while have != dim:
            if not queue:
                return None
            f = queue.pop(0)
            if len(f) == 2:                      # an atomic token axis
                if group or prefix_size(f) != dim:
                    return None
                out.append(f)
                break
            size = _size(f)
            if isinstance(dim, str) or isinstance(size, str):
                if group or not isinstance(size, str):  # only the batch is symbolic
                    return None
                group, have = [f], dim
            elif dim % (have * size) == 0:
                group.append(f)
                have *= size
            elif dim % have == 0 and size % (dim // have) == 0:
                need = dim // have
                label, stride, _ = f
                inner = size // need
                group.append((label, stride * inner if label != CHANNEL else 0, need))
                queue.insert(0, (label, stride, inner))
                have = dim
            else:
                return None
        else:
            out.append((0, _merged(group)))
    if any(not (len(f) == 3 and f[2] == 1) for f in queue):
        return None
    return tuple(out)


def prefix_size(axis: Axis) -> int | None:
    """The axis's size: a string for the symbolic batch, None while a prefix is unknown."""
    prefix, factors = axis
    if any(isinstance(_size(f), str) for f in factors):
        return _size(factors[0])
    return None if prefix is None else prefix + prod(_size(f) for f in factors)


def trace(graph: gs.Graph, input_name: str) -> dict[str, tuple[Axis, ...]]:
    """Each tensor's description (see the module's docstring), for the tensors followed."""
    tensors = graph.tensors()
    desc = {input_name: _fresh(tensors[input_name].shape)}
    measured = None
    for node in graph.nodes:  # topologically sorted
        out = node.outputs[0] if node.outputs else None
        if out is None or out.shape is None or node.op in SKIPPED:
            continue
        if (any(t.name in desc for t in node.inputs)
                and not all(isinstance(d, int) for d in out.shape[1:])):
            if measured is None:  # sizes ONNX shape inference left unknown (Swin's reshapes)
                measured = measure_shapes(graph, input_name)
            out.shape = measured.get(out.name, out.shape)
        if node.op in FRESH_OPS:
            if len(out.shape) >= 3:
                desc[out.name] = _fresh(out.shape)
            continue
        traced = [t for t in node.inputs if t.name in desc]
        if not traced:
            continue
        found = _through(node, traced, desc, out)
        if found is not None:
            desc[out.name] = found
        if node.op == "Split":
            for extra in node.outputs[1:]:
                found = _through(node, traced, desc, extra)
                if found is not None:
                    desc[extra.name] = found
    return desc


def _through(node: gs.Node, traced: list, desc: dict, out) -> tuple | None:
    source = traced[0]
    d = desc[source.name]
    shape = list(out.shape)
    if node.op == "Transpose":
        perm = node.attrs.get("perm", list(reversed(range(len(d)))))
        return tuple(d[p] for p in perm)
    if node.op in LAYOUT_OPS:
        return _regroup(d, shape) if source is node.inputs[0] else None
    if node.op in SPATIAL_RESHAPING and not _fits(d, shape):  # e.g. an empty Pad: kept
        return _fresh(shape) if _is_fresh(d) and source is node.inputs[0] else None
    if node.op == "Concat":
        return _concat(node, desc, shape)
    if node.op == "Slice":
        return _slice(node, d, source, shape)
    if node.op in ("MatMul", "Split"):
        return _channels_changed(node, d, source, shape)
    return _fits(d, shape)


def _fits(d: tuple[Axis, ...], shape) -> tuple[Axis, ...] | None:
    """`d` when `shape` has the sizes it describes (a symbolic size only where `d`'s is: the
    batch), with an unknown prefix count (None) read from `shape` when it is known there."""
    if len(shape) != len(d):
        return None
    out = []
    for (prefix, factors), dim in zip(d, shape):
        if prefix is None:
            grid = prod(_size(f) for f in factors)
            if isinstance(dim, int) and dim > grid:
                prefix = dim - grid
            out.append((prefix, factors))
            continue
        size = prefix_size((prefix, factors))
        if isinstance(size, str):  # the batch: symbolic, or fixed by the exporter's constants
            if not isinstance(dim, (int, str)):
                return None
        elif dim != size:
            return None
        out.append((prefix, factors))
    return tuple(out)


def _channels_changed(node, d, source, shape) -> tuple | None:
    """MatMul by a weight over the channel axis, or Split of the channel axis: the channel
    axis gets its new size, the rest is kept."""
    last = -1 if node.op == "MatMul" else node.attrs.get("axis", 0)
    if source is not node.inputs[0] or len(shape) != len(d) or d[last][0]:
        return None
    coarser = {f[0]: f[1] for a in d for f in a[1] if isinstance(f[0], int) and a is not d[last]}
    if any(f[0] == BATCH or (isinstance(f[0], int) and coarser.get(f[0], -1) <= f[1])
           for f in d[last][1]):
        return None  # only channels, or spatial digits finer than the grid's (patch merging)
    if node.op == "MatMul" and len(node.inputs[1].shape or ()) != 2:
        return None
    return tuple((0, ((CHANNEL, 0, shape[last]),)) if i == (last % len(d)) else a
                 for i, a in enumerate(d))


def _concat(node, desc, shape) -> tuple | None:
    """Tokens concatenated before a flattened grid (prefix tokens), or channels beside
    channels."""
    axis = node.attrs["axis"] % len(shape)
    ins = node.inputs
    last = ins[-1]
    if last.name in desc and all(t.name not in desc for t in ins[:-1]):
        d = desc[last.name]
        prefix, factors = d[axis]
        added = [t.shape[axis] if t.shape else None for t in ins[:-1]]
        if not factors or prefix is None or not all(isinstance(f[0], int) for f in factors):
            return None
        # sizes shape inference leaves symbolic (an expanded class token): the count is read
        # from the first later tensor whose size is known (_fits)
        count = prefix + sum(added) if all(isinstance(a, int) for a in added) else None
        return tuple((count, factors) if i == axis else a for i, a in enumerate(d))
    if all(t.name in desc for t in ins):
        first = desc[ins[0].name]
        if all(not a[0] and all(f[0] == CHANNEL for f in a[1])
               for a in (desc[t.name][axis] for t in ins)) and all(
                all(x == y for j, (x, y) in enumerate(zip(first, desc[t.name])) if j != axis)
                for t in ins):
            return tuple((0, ((CHANNEL, 0, shape[axis]),)) if i == axis else a
                         for i, a in enumerate(first))
    return None


def _slice(node, d, source, shape) -> tuple | None:
    """A Slice that keeps every axis whole, or drops the first tokens of a token axis."""
    if source is not node.inputs[0] or len(shape) != len(d):
        return None
    changed = [i for i, (a, s) in enumerate(zip(d, shape)) if prefix_size(a) != s]
    if not changed:
        return d
    consts = node.inputs[1:]
    if len(changed) != 1 or not all(isinstance(c, gs.Constant) for c in consts[:2]):
        return None
    i = changed[0]
    prefix, factors = d[i]
    dropped = prefix_size(d[i]) - shape[i]
    starts = consts[0].values.reshape(-1)
    if len(consts) > 2 and isinstance(consts[2], gs.Constant):
        axes = [a % len(d) for a in consts[2].values.reshape(-1)]
    else:
        axes = list(range(len(starts)))
    if len(consts) > 3 and (not isinstance(consts[3], gs.Constant)
                            or any(s != 1 for s in consts[3].values.reshape(-1))):
        return None
    if i not in axes or int(starts[axes.index(i)]) != dropped or dropped > prefix:
        return None
    return tuple((prefix - dropped, factors) if j == i else a for j, a in enumerate(d))


def classify(d: tuple[Axis, ...], spatial_rank: int) -> GridLayer | None:
    """The grid layer `d` describes, or None (see the module's docstring)."""
    if any(prefix is None for prefix, _ in d):
        return None
    coarsest: dict[int, Factor] = {}
    for _, factors in d:
        for f in factors:
            if isinstance(f[0], int) and (f[0] not in coarsest or f[1] > coarsest[f[0]][1]):
                coarsest[f[0]] = f
    if sorted(coarsest) != list(range(spatial_rank)):
        return None
    roles: list = []
    batch = channels = None
    grid_axes: dict[int, int] = {}
    token = None
    for i, (prefix, factors) in enumerate(d):
        heads = [f for f in factors if isinstance(f[0], int) and coarsest[f[0]] == f]
        if not factors and not prefix:
            roles.append(None)
        elif len(factors) == 1 and factors[0][0] == BATCH and not prefix:
            roles.append(0)
            batch = factors[0][2]
        elif not heads and not prefix and all(f[0] != BATCH for f in factors):
            roles.append(1)
            channels = prod(_size(f) for f in factors)
        elif len(factors) == 1 and len(heads) == 1 and not prefix:
            roles.append(("grid", heads[0][0]))
            grid_axes[heads[0][0]] = i
        elif heads == list(factors) and [f[0] for f in heads] == list(range(spatial_rank)):
            roles.append(2)
            token = (prefix, tuple(_size(f) for f in heads))
        else:
            return None
    if roles.count(0) != 1 or roles.count(1) != 1:
        return None
    sizes = tuple(_size(coarsest[k]) for k in range(spatial_rank))
    if all(s == 1 for s in sizes):
        return None
    if token is not None and not grid_axes:
        prefix, grid = token
        if not prefix and spatial_rank == 1:   # (N, T, C): one axis each, a plain transpose
            return GridLayer((batch, channels, *grid),
                             axes=tuple(2 if r == 2 else r for r in roles))
        return GridLayer((batch, channels, *grid), tokens=TokenGrid(tuple(roles), prefix, grid))
    if token is None and sorted(grid_axes) == list(range(spatial_rank)):
        axes = tuple(2 + r[1] if isinstance(r, tuple) else r for r in roles)
        return GridLayer((batch, channels, *sizes), axes=axes)
    return None


def override(shape, grid: tuple, prefix: int) -> GridLayer | None:
    """A tensor (N, prefix + prod(grid), C) read as tokens by the user's grid= / prefix_tokens=."""
    if len(shape) != 3 or shape[1] != prefix + prod(grid) or not isinstance(shape[2], int):
        return None
    return GridLayer((shape[0], shape[2], *grid), tokens=TokenGrid((0, 2, 1), prefix, grid))


def check_override(grid, prefix_tokens, spatial_rank: int) -> tuple[tuple, int] | None:
    """grid= / prefix_tokens= checked; None when neither is given."""
    if grid is None:
        if prefix_tokens is not None:
            raise LayerError("prefix_tokens= needs grid= too: give the patch grid's size per "
                             "spatial axis, e.g. grid=(14, 14), prefix_tokens=1.")
        return None
    grid = (grid,) if isinstance(grid, int) else tuple(grid)
    if len(grid) != spatial_rank or not all(isinstance(g, int) and g > 0 for g in grid):
        raise LayerError(f"grid= must give {spatial_rank} positive integer size(s), one per "
                         f"spatial axis of the input; got {grid!r}.")
    prefix = 0 if prefix_tokens is None else prefix_tokens
    if not isinstance(prefix, int) or prefix < 0:
        raise LayerError(f"prefix_tokens= must be an integer >= 0; got {prefix_tokens!r}.")
    return grid, prefix


def grid_layers(graph: gs.Graph, input_name: str, spatial_rank: int,
                user: tuple[tuple, int] | None) -> tuple[dict[str, GridLayer], set[str]]:
    """The grid layers of the graph by tensor name, and the tensors whose axes were
    rearranged on the way from the input (a Reshape, Transpose or Concat of tokens) and were
    not followed: their shape alone does not say which axes are positions, so they are no
    layer unless `user`'s grid (grid=, prefix_tokens=) reads them as tokens."""
    desc = trace(graph, input_name)
    found: dict[str, GridLayer] = {}
    rearranged: set[str] = set()
    for node in graph.nodes:
        if node.op in FRESH_OPS:
            continue
        downstream = any(t.name in rearranged for t in node.inputs)
        rearranged.update(o.name for o in node.outputs
                          if downstream or (o.name in desc and not _is_fresh(desc[o.name])))
    by_user = 0
    for name in rearranged:
        layer = classify(desc[name], spatial_rank) if name in desc else None
        if layer is None and user is not None:
            layer = override(graph.tensors()[name].shape or (), *user)
            by_user += layer is not None
        if layer is not None:
            found[name] = layer
    if user is not None and not by_user:
        (grid, prefix) = user
        raise LayerError(
            f"grid={grid}, prefix_tokens={prefix} matches no tensor whose grid the search "
            f"missed: a token layer must be (N, {prefix} + {'*'.join(map(str, grid))}, C) "
            "below the patch embedding. Check the grid against the model's token count, or "
            "leave grid= out when Explainer.layers already lists the token layers.")
    return found, rearranged - set(found)


def measure_shapes(graph: gs.Graph, input_name: str) -> dict[str, list]:
    """Every float tensor's shape, measured by ONNX Runtime runs on batches of 2 and 3 zeros:
    a size that follows the batch is "N", a size that differs otherwise stays unknown."""
    import onnxruntime as ort

    probe = graph.copy()
    wanted = [t for t in probe.tensors().values() if isinstance(t, gs.Variable)
              and t.dtype is not None and np.dtype(t.dtype).kind == "f" and t not in probe.inputs]
    probe.outputs = wanted
    proto = gs.export_onnx(probe, do_type_check=False)
    spec = next(t for t in graph.inputs if t.name == input_name)
    runs = []
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4  # a failed run is an expected outcome here
        session = ort.InferenceSession(proto.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        for batch in (2, 3):
            x = np.zeros((batch, *spec.shape[1:]), np.dtype(spec.dtype))
            runs.append([r.shape for r in session.run([t.name for t in wanted],
                                                      {input_name: x})])
    except Exception:  # e.g. a graph whose batch size is fixed: the sizes stay unknown
        return {}
    shapes = {}
    for t, two, three in zip(wanted, *runs):
        if len(two) == len(three):
            shapes[t.name] = [a if a == b else ("N" if (a, b) == (2, 3) else None)
                              for a, b in zip(two, three)]
    return shapes
