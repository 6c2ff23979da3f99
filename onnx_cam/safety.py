"""Load-time defences against untrusted model files.

Reading a model never executes code (ONNX is data; no custom-op library is ever registered
with ONNX Runtime) and never reads a file the user did not name, other than the external
data files that sit in the model's own folder. Each check raises a ModelLoadError or an
UnsupportedModelError that says what was refused and what to do instead.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterator

import numpy as np
import onnx
from google.protobuf.message import Message
from onnx import TensorProto, external_data_helper, helper, numpy_helper, shape_inference

from .errors import MemoryBudgetError, ModelLoadError, UnsupportedModelError
from .memory import gib, without_weights

#: protobuf cannot parse or serialise a message of 2 GiB or more.
PROTOBUF_LIMIT = 2**31 - 1
#: ops that make an execution provider read a file or a precompiled blob named in the model
FILE_READING_OPS = frozenset({("com.microsoft", "EPContext")})
_PACKED_4BIT = {TensorProto.INT4, TensorProto.UINT4,
                getattr(TensorProto, "FLOAT4E2M1", TensorProto.UINT4)}
_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")
_SAVE_HINT = ("Save it with its weights in a separate file beside it: onnx.save_model(model, "
              "'model.onnx', save_as_external_data=True, location='model.onnx.data').")


def read_model_file(path: str) -> onnx.ModelProto:
    """Parse the .onnx file at `path` and the external data it names in its own folder."""
    try:
        info = os.stat(path)
    except OSError:
        raise ModelLoadError(f"No model file at {path!r}. Check the path.") from None
    if not stat.S_ISREG(info.st_mode):
        raise ModelLoadError(f"{path!r} is not a regular file. Give the path of an .onnx file.")
    if info.st_size > PROTOBUF_LIMIT:
        raise ModelLoadError(
            f"{path!r} is {info.st_size / 2**30:.1f} GiB; protobuf cannot read a model file of "
            f"2 GiB or more, so models that large must keep their weights as external data. "
            f"{_SAVE_HINT}")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(
            f"{path!r} is not a readable ONNX model ({type(exc).__name__}: {exc}). Give an "
            ".onnx file (onnx_cam.converters.export_torch / export_keras write one)."
        ) from None
    base_dir = os.path.dirname(os.path.abspath(path))
    check_external_data(proto, base_dir)
    for tensor in model_tensors(proto):  # wherever it sits, so none is left for a runtime
        if not external_data_helper.uses_external_data(tensor):
            continue
        try:
            external_data_helper.load_external_data_for_tensor(tensor, base_dir)
        except Exception as exc:
            raise ModelLoadError(f"Reading the external data of tensor {tensor.name!r} of "
                                 f"{path!r} failed: {exc}") from None
        tensor.data_location = TensorProto.DEFAULT
        del tensor.external_data[:]
    check_proto_size(proto)
    return proto


def check_external_data(proto: onnx.ModelProto, base_dir: str | None) -> None:
    """Refuse external-data references that could read anything but a regular file inside
    `base_dir` (None: the model came as bytes or a ModelProto, so there is no folder)."""
    for tensor in model_tensors(proto):
        if not external_data_helper.uses_external_data(tensor):
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        where = f"Tensor {tensor.name!r} keeps its data in the external file {location!r}"
        if base_dir is None:
            raise ModelLoadError(
                f"{where}, but the model was given as bytes or a ModelProto, so there is no "
                "folder to read it from. Pass the path of the .onnx file instead.")
        if not location or "\0" in location:
            raise ModelLoadError(f"{where}: not a valid file name. Re-save the model.")
        parts = location.replace("\\", "/").split("/")
        if os.path.isabs(location) or os.path.splitdrive(location)[0] or ".." in parts:
            raise ModelLoadError(
                f"{where}, which lies outside the model's folder {base_dir!r}; onnx-cam only "
                "reads external data stored beside the model. Move the data file into the "
                "model's folder and name it relative to it.")
        root = os.path.realpath(base_dir)
        target = os.path.realpath(os.path.join(root, location))
        if os.path.commonpath([root, target]) != root:
            raise ModelLoadError(
                f"{where}, a symbolic link to {target!r} outside the model's folder "
                f"{base_dir!r}; onnx-cam does not follow links out of it. Copy the data file "
                "into the model's folder.")
        try:
            info = os.stat(target)
        except OSError:
            raise ModelLoadError(f"{where}, which does not exist in {base_dir!r}. Copy the "
                                 "data file beside the model.") from None
        if not stat.S_ISREG(info.st_mode):
            raise ModelLoadError(f"{where}, which is not a regular file. Give the data file "
                                 "the model was saved with.")
        _check_extent(tensor, entries, info.st_size, where)


def _check_extent(tensor: TensorProto, entries: dict, file_size: int, where: str) -> None:
    """The byte range named must lie in the file and hold exactly the tensor's values."""
    try:
        offset = int(entries.get("offset", 0))
        length = int(entries["length"]) if "length" in entries else file_size - offset
    except ValueError:
        raise ModelLoadError(f"{where} with a non-numeric offset or length. Re-save the "
                             "model.") from None
    if offset < 0 or length < 0 or offset + length > file_size:
        raise ModelLoadError(
            f"{where} at bytes {offset}..{offset + length}, beyond the file's {file_size} "
            "bytes. The data file is truncated or belongs to another model.")
    expected = tensor_bytes(tensor)
    if expected is not None and expected != length:
        raise ModelLoadError(
            f"{where}: {length} bytes for a tensor of shape {list(tensor.dims)} that needs "
            f"{expected}. The data file belongs to another model; re-save the model.")


def tensor_bytes(tensor: TensorProto) -> int | None:
    """Bytes of a tensor's values as stored raw; None for types of no fixed size."""
    count = math.prod(tensor.dims)
    if tensor.data_type in _PACKED_4BIT:
        return (count + 1) // 2
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    return None if tensor.data_type == TensorProto.STRING else count * itemsize


def check_tensor_data(proto: onnx.ModelProto) -> None:
    """Refuse stored tensors whose data does not hold exactly what their shape and type say
    (the ONNX checker does not look; a runtime would read past it or reject it)."""
    for tensor in model_tensors(proto):
        if external_data_helper.uses_external_data(tensor):
            continue  # checked against its file by check_external_data
        expected = tensor_bytes(tensor)
        if tensor.HasField("raw_data"):
            got, what = len(tensor.raw_data), "bytes"
        else:
            stored = [len(getattr(tensor, f)) for f in _TYPED_FIELDS if len(getattr(tensor, f))]
            if not stored or expected is None or tensor.data_type in _PACKED_4BIT:
                continue
            got, what = stored[0], "values"
            expected = math.prod(tensor.dims) * (
                2 if tensor.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128) else 1)
        if expected is not None and got != expected:
            raise ModelLoadError(
                f"Tensor {tensor.name!r} of shape {list(tensor.dims)} holds {got} {what} of "
                f"data where its shape and type need {expected}: the model file is damaged. "
                "Re-export the model.")


def check_proto_size(proto: onnx.ModelProto) -> None:
    """Refuse a model too large to hand to ONNX Runtime: sessions are made from its bytes."""
    size = proto.ByteSize()
    if size > PROTOBUF_LIMIT:
        raise ModelLoadError(
            f"The model with its weights is {size / 2**30:.1f} GiB; onnx-cam hands models to "
            "ONNX Runtime serialised, and protobuf cannot serialise 2 GiB or more. Models "
            "that large are not supported yet.")


def check_text(proto: onnx.ModelProto) -> None:
    """Refuse names and other text that are not UTF-8 (protobuf hands such a string field
    over as bytes, which the graph tools then fail on)."""
    for message in walk(proto):
        for field, value in message.ListFields():
            if field.type != field.TYPE_STRING:
                continue
            values = [value] if isinstance(value, (str, bytes)) else list(value)
            bad = next((v for v in values if isinstance(v, bytes)), None)
            if bad is not None:
                raise ModelLoadError(
                    f"The model's {message.DESCRIPTOR.name}.{field.name} holds {bad[:40]!r}, "
                    "which is not UTF-8 text: the file is damaged or not written by an ONNX "
                    "exporter. Re-export the model.")


def check_ops(proto: onnx.ModelProto) -> None:
    """Refuse nodes that make ONNX Runtime read files or precompiled code named in the model."""
    for node in model_nodes(proto):
        if (node.domain, node.op_type) in FILE_READING_OPS:
            raise UnsupportedModelError(
                f"Node {node.name!r} is an {node.op_type} node: a model compiled for one "
                "execution provider, whose node loads a file or binary blob. Explain the "
                "original (uncompiled) ONNX model.")


_LIST_ATTRIBUTES = frozenset({
    onnx.AttributeProto.INTS, onnx.AttributeProto.FLOATS, onnx.AttributeProto.STRINGS,
    onnx.AttributeProto.TENSORS, onnx.AttributeProto.GRAPHS, onnx.AttributeProto.SPARSE_TENSORS,
    onnx.AttributeProto.TYPE_PROTOS})


def check_attributes(proto: onnx.ModelProto) -> None:
    """Refuse list attributes that are present but empty (a Conv's `pads=[]`, a pool's
    `strides=[]`...): the ONNX operators give them one value per spatial axis, runtimes read
    an empty list as the default, and the graph tools cannot even write one back."""
    owners = [(f"Node {n.name!r} ({n.op_type})", n.attribute) for n in model_nodes(proto)]
    owners += [(f"Function {f.name!r}", f.attribute_proto) for f in proto.functions]
    for owner, attributes in owners:
        for attr in attributes:
            if attr.type in _LIST_ATTRIBUTES and not len(helper.get_attribute_value(attr)):
                raise ModelLoadError(
                    f"{owner} has an empty list for its attribute {attr.name!r}; ONNX wants "
                    "its values (e.g. one per spatial axis) or no attribute at all. Re-export "
                    "the model, or delete the attribute with onnx.")


def check_shapes(proto: onnx.ModelProto, limit: int, what: str) -> None:
    """Strict ONNX shape inference on `proto`, and no tensor of one item above `limit` bytes.

    Runs before ONNX Runtime sees the model (constant folding evaluates parts of it), so a
    graph whose shapes contradict each other, or that would build a huge constant, is refused
    up front.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    del copy.graph.value_info[:]
    try:
        inferred = shape_inference.infer_shapes(copy, check_type=True, strict_mode=True,
                                                data_prop=True)
    except Exception as exc:
        raise UnsupportedModelError(
            f"ONNX shape inference rejects this model {what}: {exc}. Check that the input "
            "size is one the model accepts, or re-export the model."
        ) from None
    _check_sizes(inferred, limit, what)


#: ops whose output can hold more values than their inputs, sized from their inputs' values
GENERATORS = frozenset({"ConstantOfShape", "Range", "Expand", "Tile", "Pad", "OneHot",
                        "Resize", "Upsample", "CenterCropPad"})
#: shape arithmetic is evaluated (to size the generator it feeds) when its result holds at
#: most this many values
SMALL_VALUES = 4096
#: ops never evaluated while sizing: random, or running subgraphs
_NOT_EVALUATED = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike",
                            "RandomUniformLike", "Multinomial", "Bernoulli", "Loop", "Scan",
                            "If"})


def check_computed_sizes(proto: onnx.ModelProto, limit: int, what: str) -> None:
    """No tensor of one item above `limit` bytes, counting those whose shape the graph
    computes from constants and from the input's shape (ConstantOfShape, Range, Expand, Tile
    fed by shape arithmetic).

    Runs before anything evaluates the graph: ONNX Runtime, constant folding, and ONNX's own
    shape inference with data propagation, whose consumers of a generator's output hold all
    its values (150 bytes each). On a copy with one item per batch and its weights left out,
    data propagation sizes the generators with their outputs cut from their consumers; a
    generator it cannot size gets the small constant computations feeding it evaluated
    (onnx.reference), and inference runs again. Nothing is evaluated before its size is
    known.
    """
    light = without_weights(proto)
    for value in light.graph.input:  # one item
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = 1
    while True:
        inferred = _infer_cut(light)
        if inferred is None:
            return  # check_shapes reports it, strictly
        _check_sizes(inferred, limit, what)
        types = {v.name: v.type.tensor_type for v in (*inferred.graph.input,
                                                       *inferred.graph.value_info,
                                                       *inferred.graph.output)}
        unsized = [n for n in light.graph.node if n.op_type in GENERATORS
                   and any(_count(types.get(o)) is None for o in n.output if o)]
        if not unsized or not _evaluate_small_constants(light, types, _feeding(light, unsized)):
            return


def _infer_cut(light: onnx.ModelProto) -> onnx.ModelProto | None:
    """Shape inference with data propagation on `light`, each generator's consumers reading
    a graph input of unknown shape instead of its output (so that none holds its values)."""
    try:
        plain = shape_inference.infer_shapes(light)
    except Exception:
        return None
    elem_types = {v.name: v.type.tensor_type.elem_type for v in plain.graph.value_info}
    cut = onnx.ModelProto()
    cut.CopyFrom(light)
    outputs = {o: f"{o}/onnx_cam_cut" for n in cut.graph.node if n.op_type in GENERATORS
               for o in n.output if o}
    for node in cut.graph.node:
        for i, name in enumerate(node.input):
            if name in outputs:
                node.input[i] = outputs[name]
    for name, alias in outputs.items():
        cut.graph.input.append(helper.make_tensor_value_info(
            alias, elem_types.get(name) or TensorProto.FLOAT, None))
    try:
        return shape_inference.infer_shapes(cut, data_prop=True)
    except Exception:
        return None


def _feeding(light: onnx.ModelProto, nodes: list) -> set[str]:
    """Names of the tensors from which the inputs of `nodes` are computed."""
    producers = {o: n for n in light.graph.node for o in n.output}
    seen: set[str] = set()
    stack = [name for node in nodes for name in node.input if name]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in producers:
            stack.extend(i for i in producers[name].input if i)
    return seen


def _evaluate_small_constants(light: onnx.ModelProto, types: dict, needed: set[str]) -> bool:
    """Replace the nodes of `light`'s graph making `needed` tensors that compute small values
    from constants (and Shape / Size of tensors of known shape) by initializers; False when
    there are none."""
    from onnx.reference import ReferenceEvaluator

    graph = light.graph
    constants = {t.name: t for t in graph.initializer}
    kept, found = [], []
    for node in graph.node:
        values = None
        counts = [_count(types.get(name)) for name in node.output if name]
        if (not needed.isdisjoint(node.output) and node.domain in ("", "ai.onnx")
                and node.op_type not in _NOT_EVALUATED
                and all(c is not None and c <= SMALL_VALUES for c in counts)):
            if node.op_type in ("Shape", "Size") and _count(types.get(node.input[0])) is not None:
                values = [_shape_of(node, types[node.input[0]])]
            elif all(name in constants for name in node.input if name):
                single = helper.make_graph(
                    [node], "single", [],
                    [helper.make_empty_tensor_value_info(name) for name in node.output],
                    [constants[name] for name in set(node.input) if name])
                try:
                    values = ReferenceEvaluator(helper.make_model(
                        single, opset_imports=light.opset_import)).run(None, {})
                except Exception:
                    values = None  # left for ONNX Runtime to fail on, or to size later
        if values is None:
            kept.append(node)
            continue
        for name, value in zip(node.output, values):
            constants[name] = numpy_helper.from_array(np.asarray(value), name)
            found.append(constants[name])
    if found:
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(found)
    return bool(found)


def _shape_of(node: onnx.NodeProto, tensor_type) -> np.ndarray:
    dims = [d.dim_value for d in tensor_type.shape.dim]
    if node.op_type == "Size":
        return np.array(math.prod(dims), np.int64)
    attrs = {a.name: a.i for a in node.attribute}
    return np.array(dims[attrs.get("start", 0):attrs.get("end", len(dims))], np.int64)


def _count(tensor_type) -> int | None:
    """Values in a tensor of fully known shape; None otherwise."""
    if tensor_type is None or not tensor_type.HasField("shape"):
        return None
    dims = tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        return None
    return math.prod(d.dim_value for d in dims)


#: bytes ONNX shape inference with data propagation holds per value of a 1-D integer tensor
#: whose values it knows (a protobuf dimension each: a Range of 3 million took 0.4 GB)
PROPAGATED_VALUE_BYTES = 150


def _check_sizes(inferred: onnx.ModelProto, limit: int, what: str) -> None:
    """A MemoryBudgetError for the first tensor, in any graph, of more than `limit` bytes
    for one item, counting what data propagation would hold for shape-like tensors."""
    for graph in model_graphs(inferred):
        for value in [*graph.value_info, *graph.output]:
            tensor_type = value.type.tensor_type
            size = _item_bytes(tensor_type)
            if size is None:
                continue
            held = ""
            if (len(tensor_type.shape.dim) <= 1 and np.issubdtype(
                    helper.tensor_dtype_to_np_dtype(tensor_type.elem_type), np.integer)):
                count = _count(tensor_type)
                if count is not None and count * PROPAGATED_VALUE_BYTES > size:
                    size = count * PROPAGATED_VALUE_BYTES
                    held = (f" ({count} integers, which ONNX shape inference holds at about "
                            f"{PROPAGATED_VALUE_BYTES} bytes each)")
            if size > limit:
                raise MemoryBudgetError(
                    f"Tensor {value.name!r} {what} would take {gib(size)}{held} for one item, "
                    f"more than the memory budget of {gib(limit)} (max_memory= or "
                    "ONNX_CAM_MAX_MEMORY). Use a smaller input or a larger budget.")


def _item_bytes(tensor_type) -> int | None:
    """Bytes of one batch item of a tensor whose other dimensions are all known."""
    if not tensor_type.HasField("shape") or not tensor_type.elem_type:
        return None
    dims = tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims[1:]):
        return None
    sizes = [d.dim_value for d in dims]
    if dims and not dims[0].HasField("dim_value"):
        sizes[0] = 1
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    return math.prod(sizes) * itemsize


def walk(proto: Message) -> Iterator[Message]:
    """Every message inside `proto`, at any depth: the one walker over a model, so that no
    place the ONNX format lets a tensor, graph or node sit (subgraphs of Loop / Scan / If,
    functions and their attribute defaults, sparse tensors, training_info) is missed."""
    stack = [proto]
    while stack:
        message = stack.pop()
        yield message
        for field, value in message.ListFields():
            if field.type == field.TYPE_MESSAGE:
                stack.extend([value] if isinstance(value, Message) else value)


def model_graphs(proto: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    """The main graph and every other: subgraphs at any depth, functions' and their
    attribute defaults', training_info's initialization and algorithm graphs."""
    return (m for m in walk(proto) if isinstance(m, onnx.GraphProto))


def model_nodes(proto: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node: of every graph (model_graphs) and of the model's functions."""
    return (m for m in walk(proto) if isinstance(m, onnx.NodeProto))


def model_tensors(proto: onnx.ModelProto) -> Iterator[TensorProto]:
    """Every tensor stored in the model: initializers, sparse ones' values and indices,
    tensor attributes and attribute defaults, everywhere."""
    return (m for m in walk(proto) if isinstance(m, TensorProto))
