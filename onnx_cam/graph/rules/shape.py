"""Gradients of ops that move values without changing them (reshape, transpose, slicing...)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..builder import rank, static_shape
from ..precision import is_float, is_half
from . import register


def _rest(node):
    return [None] * (len(node.inputs) - 1)


@register("Identity", "Dropout")
def identity(b, node, grads, wants):
    return [grads[0]] + _rest(node)


@register("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(b, node, grads, wants):
    return [b.reshape_like(grads[0], node.inputs[0])] + _rest(node)


@register("Expand")
def expand(b, node, grads, wants):
    return [b.unbroadcast(grads[0], node.outputs[0], node.inputs[0]), None]


@register("Cast")
def cast(b, node, grads, wants):
    # gradients of 16-bit float tensors, and of integers standing for real numbers (a
    # quantised model's accumulators), are held in float32 (see GradBuilder.float32)
    x = node.inputs[0]
    to = (onnx.TensorProto.FLOAT if is_half(x.dtype) or not is_float(x.dtype)
          else onnx.helper.np_dtype_to_tensor_dtype(np.dtype(x.dtype)))
    return [b.op("Cast", [grads[0]], {"to": to})]


@register("Transpose")
def transpose(b, node, grads, wants):
    perm = node.attrs.get("perm", list(reversed(range(rank(node.inputs[0])))))
    return [b.op("Transpose", [grads[0]], {"perm": list(np.argsort(perm))})]


@register("Concat")
def concat(b, node, grads, wants):
    axis = node.attrs["axis"] % rank(node.outputs[0])
    result, offset = [], 0
    for x, want in zip(node.inputs, wants):
        size = static_shape(x)[axis]
        if not isinstance(size, int):
            raise ValueError("Concat along a dynamic axis")
        if want:
            result.append(b.op("Slice", [grads[0], b.ints([offset]), b.ints([offset + size]),
                                         b.ints([axis])]))
        else:
            result.append(None)
        offset += size
    return result


@register("Split")
def split(b, node, grads, wants):
    axis = node.attrs.get("axis", 0)
    parts = [g if g is not None else b.zeros_like(out) for g, out in zip(grads, node.outputs)]
    return [b.op("Concat", parts, {"axis": axis})] + _rest(node)


def _constant_ints(tensor, what):
    if not isinstance(tensor, gs.Constant):
        raise ValueError(f"the {what} are computed at run time")
    return [int(v) for v in tensor.values.reshape(-1)]


@register("Slice")
def slice_(b, node, grads, wants):
    """Zeros around the slice: a Pad; a step other than 1 first spreads the gradient out
    (reversed for a negative step, zeros interleaved for a stride)."""
    x, grad = node.inputs[0], grads[0]
    shape = static_shape(x)
    if not all(isinstance(t, gs.Constant) for t in node.inputs[1:3]):
        return [_runtime_slice_gradient(b, node, grad)] + _rest(node)
    starts = _constant_ints(node.inputs[1], "slice starts")
    ends = _constant_ints(node.inputs[2], "slice ends")
    axes = (_constant_ints(node.inputs[3], "slice axes") if len(node.inputs) > 3
            and node.inputs[3].name else list(range(len(starts))))
    steps = (_constant_ints(node.inputs[4], "slice steps") if len(node.inputs) > 4
             and node.inputs[4].name else [1] * len(starts))
    r = len(shape)
    pads: list = [0] * (2 * r)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= r
        size = shape[axis]
        if step != 1:
            if not isinstance(size, int):
                raise ValueError("Slice with a step other than 1 along a dynamic axis")
            taken = _slice_positions(start, end, step, size)
            if not taken:
                return [b.zeros_like(x)] + _rest(node)
            grad = _spread(b, grad, axis, r, len(taken), step)
            first = min(taken)
            pads[axis], pads[r + axis] = first, size - 1 - max(taken)
        elif isinstance(size, int):
            first, stop, _ = slice(start, end).indices(size)
            pads[axis], pads[r + axis] = first, size - max(stop, first)
        else:  # a dynamic axis (the batch, a Loop's steps): the pads are computed at run time
            pads[axis], pads[r + axis] = _dynamic_pads(b, x, axis, start, end)
    if all(isinstance(p, int) for p in pads):
        return [b.op("Pad", [grad, b.ints(pads)])] + _rest(node)
    parts = [b.ints([p]) if isinstance(p, int) else p for p in pads]
    runtime = b.op("Concat", parts, {"axis": 0}, dtype=np.int64)
    return [b.op("Pad", [grad, runtime])] + _rest(node)


def _slice_positions(start: int, end: int, step: int, size: int) -> range:
    """The indices ONNX Slice takes along one axis (its clamping differs from Python's)."""
    start, end = (v + size if v < 0 else v for v in (start, end))
    if step > 0:
        return range(min(max(start, 0), size), min(max(end, 0), size), step)
    return range(min(max(start, 0), size - 1), min(max(end, -1), size - 1), step)


def _spread(b, grad, axis: int, rank_: int, count: int, step: int):
    """The gradient of `count` entries taken every `step` along `axis`, laid out in
    ascending positions with |step| - 1 zeros between neighbours (none after the last)."""
    if step < 0:
        grad = _reversed(b, grad, axis)
    stride = abs(step)
    if stride == 1:
        return grad
    # (.., count, ..) -> (.., count, 1, ..) -> zeros after: (.., count, stride, ..) -> merged
    gaps = [0] * (2 * (rank_ + 1))
    gaps[rank_ + 1 + axis + 1] = stride - 1
    spaced = b.op("Pad", [b.op("Unsqueeze", [grad, b.ints([axis + 1])]), b.ints(gaps)])
    shape = b.op("Shape", [grad], dtype=np.int64)
    merged = b.op("Concat", [b.op("Slice", [shape, b.ints([0]), b.ints([axis])], dtype=np.int64),
                             b.ints([count * stride]),
                             b.op("Slice", [shape, b.ints([axis + 1]), b.ints([rank_])],
                                  dtype=np.int64)], {"axis": 0}, dtype=np.int64)
    flat = b.op("Reshape", [spaced, merged])
    return b.op("Slice", [flat, b.ints([0]), b.ints([(count - 1) * stride + 1]), b.ints([axis])])


def _reversed(b, t, axis: int):
    return b.op("Slice", [t, b.ints([-1]), b.ints([np.iinfo(np.int64).min]), b.ints([axis]),
                          b.ints([-1])])


def _runtime_slice_gradient(b, node, grad):
    """The gradient of a Slice of unit steps whose starts / ends are computed at run time
    (from shapes, e.g. Swin's crop after its window padding): a Pad by pads computed from
    them as ONNX Slice clamps them."""
    x, starts, ends = node.inputs[:3]
    count = static_shape(starts)[0] if starts.shape else None
    axes = (_constant_ints(node.inputs[3], "slice axes") if len(node.inputs) > 3
            and node.inputs[3].name else list(range(count if isinstance(count, int) else 0)))
    if not axes or (len(node.inputs) > 4 and node.inputs[4].name and any(
            step != 1 for step in _constant_ints(node.inputs[4], "slice steps"))):
        raise ValueError("Slice with starts / ends computed at run time and steps other "
                         "than 1, or axes unknown")
    r = rank(x)
    pads: list = [b.ints([0])] * (2 * r)
    for i, axis in enumerate(axes):
        def pick(values, i=i):
            return b.op("Slice", [values, b.ints([i]), b.ints([i + 1])], dtype=np.int64)
        pads[axis % r], pads[r + axis % r] = _dynamic_pads(b, x, axis % r, pick(starts),
                                                           pick(ends))
    return b.op("Pad", [grad, b.op("Concat", pads, {"axis": 0}, dtype=np.int64)])


def _dynamic_pads(b, x, axis: int, start, end):
    """(before, after) pads undoing x[start:end] along a dynamic axis, as ONNX Slice clamps;
    start and end are ints, or int64 tensors of one value computed at run time."""
    size = b.op("Slice", [b.shape_of(x), b.ints([axis]), b.ints([axis + 1])], dtype=np.int64)
    zero = b.ints([0])

    def position(index):
        if isinstance(index, int):
            at = (b.op("Add", [size, b.ints([index])], dtype=np.int64) if index < 0
                  else b.ints([index]))
        else:  # Slice's clamp counts a negative index from the end
            at = b.op("Where", [b.op("Less", [index, zero], dtype=np.bool_),
                                b.op("Add", [size, index], dtype=np.int64), index],
                      dtype=np.int64)
        return b.op("Min", [b.op("Max", [at, zero], dtype=np.int64), size], dtype=np.int64)

    first = position(start)
    stop = b.op("Max", [position(end), first], dtype=np.int64)
    return first, b.op("Sub", [size, stop], dtype=np.int64)


@register("Pad")
def pad(b, node, grads, wants):
    mode = node.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    x = node.inputs[0]
    r = rank(x)
    if mode == "constant" and not isinstance(node.inputs[1], gs.Constant) and not (
            len(node.inputs) > 3 and node.inputs[3].name):
        return [_runtime_pad_gradient(b, x, node.inputs[1], grads[0], r)] + _rest(node)
    pads = _constant_ints(node.inputs[1], "pads")
    axes = (_constant_ints(node.inputs[3], "pad axes") if len(node.inputs) > 3
            and node.inputs[3].name else list(range(r)))
    n = len(axes)
    if min(pads, default=0) < 0:
        raise ValueError("Pad with negative pads is not supported")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise ValueError(f"Pad in {mode!r} mode is not supported")
    if mode != "constant":
        grad = grads[0]
        for i, axis in enumerate(axes):
            if pads[i] or pads[n + i]:
                grad = _fold_border(b, grad, axis % r, r, static_shape(x)[axis % r],
                                    pads[i], pads[n + i], mode)
        return [grad] + _rest(node)
    starts, ends, sliced = [], [], []
    for i, axis in enumerate(axes):
        begin, end = pads[i], pads[n + i]
        if begin or end:  # counting from the end needs no static size (batch axes are dynamic)
            starts.append(begin)
            ends.append(-end if end else np.iinfo(np.int64).max)
            sliced.append(axis % r)
    if not sliced:
        return [grads[0]] + _rest(node)
    cut = b.op("Slice", [grads[0], b.ints(starts), b.ints(ends), b.ints(sliced)])
    return [cut] + _rest(node)


def _runtime_pad_gradient(b, x, pads, grad, r: int):
    """The gradient of a constant Pad whose pads are computed at run time (Swin's window
    padding, often 0): the part of the output gradient the input's kept entries occupy, with
    zeros for entries a negative pad cut off."""
    def part(lo: int):
        return b.op("Slice", [pads, b.ints([lo]), b.ints([lo + r])], dtype=np.int64)

    zero = b.ints([0] * r)

    def positive(v):
        return b.op("Max", [v, zero], dtype=np.int64)

    def negative(v):
        return positive(b.op("Neg", [v], dtype=np.int64))

    begin, end = part(0), part(r)
    first = positive(begin)
    kept = b.op("Sub", [b.op("Sub", [b.shape_of(x), negative(begin)], dtype=np.int64),
                        negative(end)], dtype=np.int64)
    cut = b.op("Slice", [grad, first, b.op("Add", [first, kept], dtype=np.int64),
                         b.ints(list(range(r)))])
    return b.op("Pad", [cut, b.op("Concat", [negative(begin), negative(end)], {"axis": 0},
                                  dtype=np.int64)])


def _fold_border(b, grad, axis: int, rank_: int, size, before: int, after: int, mode: str):
    """Add the gradient of the padded borders back onto the input entries they copy
    (reflect: mirrored without the edge entry; edge: the edge entry; wrap: the far end)."""
    if not isinstance(size, int):
        raise ValueError(f"Pad in {mode!r} mode along a dynamic axis")
    limit = size - 1 if mode == "reflect" else size if mode == "wrap" else None
    if limit is not None and max(before, after) > limit:
        raise ValueError(f"{mode} pads of {max(before, after)} exceed the axis size {size}")

    def cut(lo, hi):
        return b.op("Slice", [grad, b.ints([lo]), b.ints([hi]), b.ints([axis])])

    def place(part, lo, hi):
        gaps = [0] * (2 * rank_)
        gaps[axis], gaps[rank_ + axis] = lo, hi
        return b.op("Pad", [part, b.ints(gaps)])

    parts = [cut(before, before + size)]
    if before:
        head = cut(0, before)
        parts.append({"reflect": lambda: place(_reversed(b, head, axis), 1, size - 1 - before),
                      "edge": lambda: place(b.reduce_sum(head, [axis]), 0, size - 1),
                      "wrap": lambda: place(head, size - before, 0)}[mode]())
    if after:
        tail = cut(before + size, before + size + after)
        parts.append({"reflect": lambda: place(_reversed(b, tail, axis), size - 1 - after, 1),
                      "edge": lambda: place(b.reduce_sum(tail, [axis]), size - 1, 0),
                      "wrap": lambda: place(tail, 0, size - after)}[mode]())
    return b.add_all(parts)


@register("DepthToSpace", "SpaceToDepth")
def depth_space(b, node, grads, wants):
    """Both ops only permute entries: the gradient is the inverse permutation."""
    x, y = node.inputs[0], node.outputs[0]
    block = node.attrs["blocksize"]
    mode = node.attrs.get("mode", "DCR")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if node.op == "SpaceToDepth":
        return [b.op("DepthToSpace", [grads[0]], {"blocksize": block, "mode": "DCR"})]
    if mode == "DCR":
        return [b.op("SpaceToDepth", [grads[0]], {"blocksize": block})]
    # CRD: y[n, c, h*k + i, w*k + j] = x[n, c*k*k + i*k + j, h, w]
    channels, height, width = static_shape(y)[1:]
    if not all(isinstance(d, int) for d in (channels, height, width)):
        raise ValueError("DepthToSpace with dynamic channel or spatial axes")
    h, w = height // block, width // block
    split = b.op("Reshape", [grads[0], b.ints([-1, channels, h, block, w, block])])
    moved = b.op("Transpose", [split], {"perm": [0, 1, 3, 5, 2, 4]})
    return [b.reshape_like(moved, x)]


@register("Tile")
def tile(b, node, grads, wants):
    """Each tiled axis of size n becomes (repeats, n); the copies are summed."""
    x = node.inputs[0]
    repeats = _constant_ints(node.inputs[1], "tile repeats")
    shape = b.shape_of(x)
    layout, summed = [], []
    for axis, k in enumerate(repeats):
        if k != 1:
            summed.append(len(layout))
            layout.append(b.ints([k]))
        layout.append(b.op("Slice", [shape, b.ints([axis]), b.ints([axis + 1])], dtype=np.int64))
    if not summed:
        return [grads[0], None]
    split = b.op("Reshape", [grads[0], b.op("Concat", layout, {"axis": 0}, dtype=np.int64)])
    return [b.reduce_sum(split, summed, keepdims=False), None]


@register("Gather")
def gather(b, node, grads, wants):
    data, indices = node.inputs
    if not isinstance(indices, gs.Constant):
        raise ValueError("Gather indices computed at run time")
    r = rank(data)
    axis = node.attrs.get("axis", 0) % r
    size = static_shape(data)[axis]
    flat = indices.values.reshape(-1).astype(np.int64) % size
    # the gradient laid out as data with the gathered axis holding len(flat) entries
    shape = b.shape_of(data)
    parts = [b.op("Slice", [shape, b.ints([0]), b.ints([axis])], dtype=np.int64),
             b.ints([len(flat)]),
             b.op("Slice", [shape, b.ints([axis + 1]), b.ints([r])], dtype=np.int64)]
    layout = b.op("Concat", parts, {"axis": 0}, dtype=np.int64)
    grad = b.op("Reshape", [grads[0], layout])
    column = flat.reshape([-1 if i == axis else 1 for i in range(r)])
    where = b.op("Expand", [b.const(column, np.int64), layout], dtype=np.int64)
    placed = b.op("ScatterElements", [b.zeros_like(data), where, grad],
                  {"axis": axis, "reduction": "add"})
    return [placed, None]


@register("ReverseSequence")
def reverse_sequence(b, node, grads, wants):
    """Reversing the first sequence_lens[i] steps of each item is its own inverse, so its
    transpose too."""
    return [b.op("ReverseSequence", [grads[0], node.inputs[1]], dict(node.attrs)), None]


@register("GatherND")
def gather_nd(b, node, grads, wants):
    """The gradient added back at the positions read (ScatterND with reduction "add", so
    positions read more than once, e.g. by the overlapping windows of an adaptive pooling,
    accumulate). batch_dims > 0 becomes batch_dims 0 by prefixing each index with its batch
    position, which needs constant indices (whose leading axes give the batch sizes)."""
    data, indices = node.inputs
    batch = node.attrs.get("batch_dims", 0)
    constant = isinstance(indices, gs.Constant)
    if batch and not constant:
        raise ValueError("GatherND with batch_dims and indices computed at run time")
    where = indices
    if not constant or (np.asarray(indices.values) < 0).any():  # negative ones count back
        k = static_shape(indices)[-1]
        sizes = b.op("Slice", [b.shape_of(data), b.ints([batch]), b.ints([batch + k])],
                     dtype=np.int64)
        where = b.op("Mod", [indices, sizes], dtype=np.int64)
    if batch:  # (i_0, ..., i_{b-1}) before each index of batch item (i_0, ..., i_{b-1})
        shape = np.asarray(indices.values).shape
        lead = shape[:batch]
        grid = np.moveaxis(np.indices(lead), 0, -1)
        grid = grid.reshape(*lead, *[1] * (len(shape) - 1 - batch), batch)
        prefix = np.broadcast_to(grid, (*shape[:-1], batch))
        where = b.op("Concat", [b.const(prefix, np.int64), where], {"axis": -1},
                     dtype=np.int64)
    placed = b.op("ScatterND", [b.zeros_like(data), where, grads[0]], {"reduction": "add"})
    return [placed, None]
