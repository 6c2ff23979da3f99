"""Memory: the budget an explain call may use, and what a run needs, estimated from shapes.

The estimate walks the rewritten graph in execution order with every tensor's inferred
shape: a tensor is alive from the node that makes it to the last node that reads it (graph
outputs to the end, weights throughout), which is what ONNX Runtime's memory planner
allocates at most. Each size is `fixed + per_item * batch`, so the largest batch that fits a
budget follows without running anything.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, shape_inference

from .errors import InputError, MemoryBudgetError

ENV_VAR = "ONNX_CAM_MAX_MEMORY"
#: ONNX Runtime's arena and kernel workspaces on top of the live tensors: measured peaks
#: reached 1.6x the estimate of run_footprint (benchmarks/bench_memory.py)
RUNTIME_OVERHEAD = 2.0
#: share of the machine's memory (RAM, or the container's limit) an explain call may use
DEFAULT_SHARE = 0.75
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6,
          "mib": 2**20, "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12,
          "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)

_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def parse_size(value: int | float | str) -> int:
    """Bytes from a number of bytes or a string such as "8GB", "512 MiB", "1.5g"."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        size = float(value)
    else:
        match = _SIZE.match(str(value))
        if not match or match.group(2).lower() not in _UNITS:
            raise InputError(f"Memory size {value!r} is not a number of bytes or a size such "
                             "as '8GB' or '512MiB'.")
        size = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not math.isfinite(size) or size <= 0:
        raise InputError(f"Memory size {value!r} must be positive.")
    return int(size)


def machine_memory() -> int:
    """Physical memory, or the cgroup (container) limit when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _CGROUP_LIMITS:
        try:
            with open(path) as handle:
                text = handle.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def memory_budget(max_memory: int | float | str | None = None) -> int:
    """The bytes an explain call may use: `max_memory`, else the ONNX_CAM_MAX_MEMORY
    environment variable, else 75% of the machine's memory."""
    if max_memory is not None:
        return parse_size(max_memory)
    if os.environ.get(ENV_VAR):
        return parse_size(os.environ[ENV_VAR])
    return int(DEFAULT_SHARE * machine_memory())


def gib(size: float) -> str:
    return f"{size / 2**30:.2f} GiB"


@dataclass(frozen=True)
class Footprint:
    """Bytes alive at each step of a run, as `fixed + per_item * batch`."""

    fixed: np.ndarray
    per_item: np.ndarray
    outputs: dict = field(default_factory=dict)  # per-item bytes of each graph output

    def bytes(self, batch: int) -> int:
        """The peak for a batch of `batch` items."""
        return int((self.fixed + self.per_item * batch).max(initial=0))

    def max_batch(self, budget: int) -> int:
        """The largest batch whose peak stays within `budget` (0: not even one item)."""
        room = budget - self.fixed
        if (room < 0).any():
            return 0
        fits = room[self.per_item > 0] // self.per_item[self.per_item > 0]
        return int(min(fits.min(initial=2**31), 2**31))

    def scaled(self, factor: float) -> Footprint:
        return Footprint(self.fixed * factor, self.per_item * factor, self.outputs)

    def plus(self, fixed: float = 0.0, per_item: float = 0.0) -> Footprint:
        """With `fixed + per_item * batch` more bytes alive throughout."""
        return Footprint(self.fixed + fixed, self.per_item + per_item, self.outputs)


def explain_need(footprint: Footprint, activation_names: Sequence[str], channels: Sequence,
                 item_bytes: float, spatial: tuple[int, ...], maps: int, rows: int,
                 classes: int) -> tuple[Footprint, Footprint, float]:
    """(everything, one run, the results' bytes) an explain call needs: the rewritten model's
    live tensors (its `footprint`) times RUNTIME_OVERHEAD and the methods' numpy temporaries
    per run (`item_bytes`: one item's inputs), plus the result arrays of `rows` rows (`maps`
    methods kept per row at layers of `channels` channels; 0: activations and gradients)."""
    acts = [footprint.outputs.get(name, 0.0) for name in activation_names]
    cam = 4.0 * np.prod(spatial)
    if maps:  # a raw map is the activations over the channels (all of them if unknown)
        channels = [c if isinstance(c, int) and c > 0 else 1 for c in channels]
        per_row = maps * sum(cam + a / c + 8 for a, c in zip(acts, channels))
    else:  # activations_and_gradients: every output kept, then concatenated
        per_row = 2.0 * sum(footprint.outputs.values())
    results = rows * (per_row + 8.0 * classes + 32)
    workspace = 6 * max(acts, default=0.0) + 2 * cam + 2 * item_bytes
    run = footprint.scaled(RUNTIME_OVERHEAD).plus(per_item=workspace)
    return run.plus(fixed=results), run, results


def fit_batch(need: Footprint, run: Footprint, results: float, budget: int, batch_size: int,
              rows: int, item_shape: tuple, layers: list[str]) -> int:
    """The largest batch, up to `batch_size`, whose run fits `budget` beside the results of
    `rows` rows (explain_need); a MemoryBudgetError when not even one item per run fits."""
    fits = need.max_batch(budget)
    if fits < 1:
        fewer = "explain fewer items per call, " if results > budget / 2 else ""
        raise MemoryBudgetError(
            f"Explaining {rows} row(s) of inputs shaped {item_shape} at layer(s) "
            f"{layers} needs about {gib(need.bytes(1))} (a run "
            f"of one item {gib(run.bytes(1))}, the maps kept {gib(results)}), more than "
            f"the memory budget of {gib(budget)}. Raise the budget (Explainer(..., "
            f"max_memory='32GB') or ONNX_CAM_MAX_MEMORY), {fewer}choose a deeper layer, "
            "or give smaller (cropped or downsampled) inputs.")
    return min(batch_size, fits)


def run_footprint(proto: onnx.ModelProto) -> Footprint:
    """The bytes alive at each node of `proto` when ONNX Runtime runs it, assuming no buffer
    is reused (an upper bound of what its planner allocates), plus the outputs copied out
    to numpy. Shapes are inferred for batches of 1 and 2, so tensors whose shape is computed
    in the graph (flattened, ConstantOfShape) are sized too."""
    light = without_weights(proto)
    shapes = _shapes(light, 1)
    one, two = _static_sizes(shapes), _static_sizes(_shapes(light, 2))
    sizes = {name: (2 * one[name] - two[name], two[name] - one[name])
             for name in one.keys() & two.keys()}
    graph = proto.graph
    nodes = list(graph.node)
    end = len(nodes)
    sources = {t.name for t in graph.input} | {t.name for t in graph.initializer}
    born = dict.fromkeys(sources, 0)
    last = dict.fromkeys(sources, end)  # inputs and weights: alive the whole run
    for step, node in enumerate(nodes):
        for name in _reads(node):
            if name in last and name not in sources:
                last[name] = max(last[name], step)
        for name in node.output:
            born.setdefault(name, step)
            last.setdefault(name, step)
    for out in graph.output:
        last[out.name] = end
    fixed = np.zeros(end + 2)
    per_item = np.zeros(end + 2)
    for name, start in born.items():
        f, p = sizes.get(name, (0.0, 0.0))
        fixed[start] += f
        fixed[last[name] + 1] -= f
        per_item[start] += p
        per_item[last[name] + 1] -= p
    fixed, per_item = np.cumsum(fixed)[:end + 1], np.cumsum(per_item)[:end + 1]
    dims = {name: d for name, (d, _) in shapes.items()}
    for step, node in enumerate(nodes):  # while a transposed convolution runs
        if node.op_type == "ConvTranspose":
            fixed[step] += _unfolded_bytes(node, dims)
    for out in graph.output:  # copied to numpy while ONNX Runtime's buffers stay
        f, p = sizes.get(out.name, (0.0, 0.0))
        fixed[-1] += f
        per_item[-1] += p
    return Footprint(fixed, per_item, {o.name: sizes.get(o.name, (0.0, 0.0))[1]
                                       for o in graph.output})


def _static_sizes(shapes: dict[str, tuple[list, int]]) -> dict[str, float]:
    """Bytes of every tensor whose shape is fully known."""
    return {name: float(math.prod(d) * size) for name, (d, size) in shapes.items()
            if None not in d}


def without_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its large initializers turned into inputs of the same type and shape:
    what shape inference needs, without copying and serialising the weights."""
    light = onnx.ModelProto()
    light.ir_version = proto.ir_version
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    graph = light.graph
    graph.node.extend(proto.graph.node)
    graph.input.extend(proto.graph.input)
    graph.output.extend(proto.graph.output)
    for init in proto.graph.initializer:
        if init.ByteSize() <= 4096:  # small ones may be shapes that inference reads
            graph.initializer.append(init)
        else:
            graph.input.append(helper.make_tensor_value_info(init.name, init.data_type,
                                                             list(init.dims)))
    return light


def _shapes(light: onnx.ModelProto, batch: int) -> dict[str, tuple[list, int]]:
    """(dimensions, item size) of each tensor, inferred with the batch axis set to `batch`
    (the graph's inputs with a symbolic first axis are the batched ones)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(light)
    for value in copy.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = batch
    try:
        copy = shape_inference.infer_shapes(copy, data_prop=True)
    except Exception:  # the model was checked at load: size what inference gave
        pass
    graph = copy.graph
    found = {v.name: ([d.dim_value if d.HasField("dim_value") else None
                       for d in v.type.tensor_type.shape.dim],
                      _itemsize(v.type.tensor_type.elem_type))
             for v in [*graph.input, *graph.value_info, *graph.output]
             if v.type.tensor_type.HasField("shape")}
    found.update({t.name: (list(t.dims), _itemsize(t.data_type)) for t in graph.initializer})
    return found


def _unfolded_bytes(node: onnx.NodeProto, dims: dict[str, list]) -> float:
    """The column buffer ONNX Runtime's ConvTranspose fills for one item at a time: (output
    channels per group x kernel) values per input position (its Conv works in bounded
    segments instead)."""
    weight = dims.get(node.input[1]) if len(node.input) > 1 else None
    positions = dims.get(node.input[0])
    if not weight or not positions or None in weight or None in positions[2:]:
        return 0.0
    return 4.0 * weight[1] * math.prod(weight[2:]) * math.prod(positions[2:])


def _reads(node: onnx.NodeProto) -> list[str]:
    """Tensors a node reads, with those its subgraphs read from the enclosing graph."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in graphs:
            for inner in sub.node:
                names.extend(_reads(inner))
    return names


def _itemsize(elem_type: int) -> int:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return 0
