"""Load and validate an ONNX model; its input, score (logits), head and candidate layers."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import shape_inference

from . import grids, safety
from .concurrency import OnceCache
from .converters.metadata import (
    CHANNELS_LAST,
    CLASS_NAMES_KEY,
    LAYER_MAP_KEY,
    LAYOUT_KEY,
    UNVERIFIED_KEY,
)
from .errors import (
    InputError,
    LayerError,
    ModelLoadError,
    OnnxCamError,
    UnsupportedModelError,
)
from .graph import qoperators, toposort
from .graph.batch_shapes import resolve_batch_shapes
from .graph.nms import before_nms
from .graph.precision import float32_input, is_float, is_half
from .graph.quantized import INTEGER_PATH_OPS, dequantized_sources, rescaling_steps
from .graph.rules import RULES
from .graph.unroll import STEP, unroll_loops
from .grids import TokenGrid
from .memory import memory_budget
from .opset_upgrade import upgrade
from .scopes import module_outputs
from .unfuse import unfuse

HEADS = ("Softmax", "LogSoftmax", "Sigmoid")
MIN_OPSET = 16  # ScatterElements(reduction="add"), used by the MaxPool gradient
# Ops whose outputs carry no gradient: the differentiable path never crosses them.
NON_DIFFERENTIABLE = frozenset({
    "Shape", "Size", "ArgMax", "ArgMin", "Equal", "Greater", "GreaterOrEqual", "Less",
    "LessOrEqual", "Not", "And", "Or", "Xor", "NonZero", "ConstantOfShape", "Range",
    "IsNaN", "IsInf", "Sign", "Floor", "Ceil", "Round", "RandomNormalLike", "RandomUniformLike",
    "EyeLike", "OneHot",
})
SPATIAL_OPS = frozenset({"Conv", "ConvTranspose", "ConvInteger"})
# Ops that only rearrange a tensor: in a channels-last model their output is listed as a layer
# only when a framework layer name points to it or their input is not already a layer.
LAYOUT_OPS = frozenset({"Transpose", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Identity"})
# Ops that keep the rank but reorder or mix positions and channels: axes are not traced through.
REORDERING_OPS = frozenset({
    "ReverseSequence", "Gather", "GatherElements", "GatherND", "ScatterElements", "ScatterND",
    "DepthToSpace", "SpaceToDepth", "Einsum", "TopK", "Loop", "Scan", "If",
})


@dataclass(frozen=True)
class Layer:
    """A candidate target layer: an ONNX tensor with spatial extent."""

    name: str                      # the name shown to users (framework name when known)
    tensor: str                    # the ONNX tensor name
    op: str                        # the op that produces it
    shape: tuple                   # (N, C, *spatial), N symbolic, whatever the tensor's layout
    aliases: tuple = field(default=())  # every name that resolves to this tensor
    # which axis of (N, C, *spatial) each axis of the tensor is (None: a unit axis to drop);
    # None when the tensor is (N, C, *spatial) already
    axes: tuple | None = None
    # a transformer's token axis read as a patch grid (prefix tokens dropped), see grids.py
    tokens: TokenGrid | None = None

    @property
    def channels_last(self) -> bool:
        """The tensor holds its channels on its last axis (N, *spatial, C)."""
        return self.axes is not None and [a for a in self.axes if a is not None][-1] == 1


def load_proto(source) -> onnx.ModelProto:
    """Read a model from a path, bytes or ModelProto; never executes code, and reads no file
    but the one named and the external data in its folder (see onnx_cam.safety)."""
    if isinstance(source, onnx.ModelProto):
        proto = source
    elif isinstance(source, (bytes, bytearray)):
        if len(source) > safety.PROTOBUF_LIMIT:
            raise ModelLoadError("The bytes given are 2 GiB or more, which protobuf cannot "
                                 "read. Save the model with external data and pass its path.")
        try:
            proto = onnx.load_from_string(bytes(source))
        except Exception as exc:
            raise ModelLoadError(
                f"The bytes given are not a serialized ONNX model ({exc}). "
                "Pass the contents of an .onnx file, a path, or an onnx.ModelProto."
            ) from None
    elif isinstance(source, (str, os.PathLike)):
        return safety.read_model_file(os.fspath(source))
    else:
        raise ModelLoadError(
            f"Cannot load a model from a {type(source).__name__}. "
            "Pass a path, bytes, an onnx.ModelProto, or a torch.nn.Module with example_input=."
        )
    safety.check_external_data(proto, None)
    safety.check_proto_size(proto)
    return proto


_METADATA_SHAPES = {LAYER_MAP_KEY: (dict, "a JSON object of framework layer name -> ONNX "
                                          "tensor name"),
                    CLASS_NAMES_KEY: (list, "a JSON list of class names")}


def _read_metadata(metadata: dict[str, str], key: str):
    """The converters' JSON entry `key` (a dict or list of strings), None when absent; a
    malformed one raises a ModelLoadError naming the key and the fix."""
    if key not in metadata:
        return None
    kind, wanted = _METADATA_SHAPES[key]
    try:
        value = json.loads(metadata[key])
    except (ValueError, RecursionError):  # not JSON, or nested past Python's stack
        value = None
    strings = value.values() if isinstance(value, dict) else value
    if not isinstance(value, kind) or not all(isinstance(v, str) for v in strings):
        raise ModelLoadError(
            f"The model's metadata entry {key!r} holds {metadata[key][:80]!r}, which is not "
            f"{wanted}. Re-export the model with onnx_cam.converters, or remove the entry "
            "from model.metadata_props with onnx and save the model again.")
    return value


def _default_opset(proto: onnx.ModelProto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


class Model:
    """A validated ONNX model with everything onnx-cam needs to know about it."""

    def __init__(self, source, output: str | None = None, channels_last: bool | None = None,
                 max_memory: int | str | None = None, input: str | None = None, grid=None,
                 prefix_tokens=None):
        proto = load_proto(source)
        safety.check_text(proto)
        safety.check_tensor_data(proto)
        proto = toposort.sorted_model(proto)
        try:
            onnx.checker.check_model(proto)
        except Exception as exc:
            raise ModelLoadError(
                f"The ONNX checker rejects this model: {exc}. Re-export it with a current exporter."
            ) from None
        safety.check_ops(proto)
        safety.check_attributes(proto)
        proto = qoperators.qdq_model(proto)
        proto = unfuse(proto)  # ONNX Runtime-optimised graphs: contrib ops as standard ops
        self.max_tensor_bytes = memory_budget(max_memory)
        opset = _default_opset(proto)
        if opset < MIN_OPSET:
            try:
                proto = upgrade(proto, opset)
            except OnnxCamError:
                raise
            except Exception as exc:
                raise UnsupportedModelError(
                    f"The model uses opset {opset}; onnx-cam needs opset >= {MIN_OPSET} and the "
                    f"automatic upgrade failed ({exc}). Re-export with opset_version=17."
                ) from None
        self.proto = proto
        self.opset = max(opset, 17) if opset < MIN_OPSET else opset
        metadata = {p.key: p.value for p in proto.metadata_props}
        self.layer_map: dict[str, str] = _read_metadata(metadata, LAYER_MAP_KEY) or {}
        self.unverified_layers = _unverified_layers(metadata.get(UNVERIFIED_KEY))
        if not self.layer_map:  # a bare dynamo export: module names from its node metadata
            self.layer_map = module_outputs(proto)
        self.class_names: list[str] | None = _read_metadata(metadata, CLASS_NAMES_KEY)
        initializers = {i.name for i in proto.graph.initializer}
        inputs = [i for i in proto.graph.input if i.name not in initializers]
        self.input_names = tuple(i.name for i in inputs)
        # several inputs: the explained one (maps over its spatial axes) and those fed as given
        self.spatial_inputs = spatial_inputs(proto, inputs)
        explained = explained_input(inputs, self.spatial_inputs, input)
        self.input_chosen = input is not None or len(self.spatial_inputs) <= 1
        self.side_inputs = {i.name: side_spec(i) for i in inputs if i is not explained}
        self.input_name = explained.name
        dims = explained.type.tensor_type.shape.dim
        self.input_shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        try:
            self.input_dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(
                explained.type.tensor_type.elem_type))
        except (KeyError, TypeError, ValueError):
            raise UnsupportedModelError(
                f"The model input {self.input_name!r} is a {explained.type.WhichOneof('value')} "
                f"of element type {explained.type.tensor_type.elem_type}; onnx-cam explains "
                "models fed one float or integer tensor. Re-export the model.") from None
        # (N, T) integer token ids feeding an embedding: one spatial axis, no channel axis
        self.tokens = self.input_dtype.kind in "iu" and len(self.input_shape) == 2
        # (N, T) float samples (a raw waveform): a one-channel signal, (N, 1, T) to onnx-cam
        self.raw_signal = self.input_dtype.kind == "f" and len(self.input_shape) == 2
        if self.raw_signal:
            self.input_shape = (self.input_shape[0], 1, self.input_shape[1])
        if self.tokens or self.raw_signal:
            channels_last = False
        elif channels_last is None:  # the converter's word, else what the convolutions read
            layout = metadata.get(LAYOUT_KEY)
            channels_last = (layout == CHANNELS_LAST if layout
                             else _convs_read_last_axis(proto, self.input_name))
        self.channels_last = bool(channels_last)
        if len(self.input_shape) not in (3, 4, 5) and not self.tokens:
            layouts = ("(N, T, C), (N, H, W, C) and (N, D, H, W, C)" if self.channels_last
                       else "(N, C, T), (N, C, H, W) and (N, C, D, H, W)")
            raise UnsupportedModelError(
                f"The model input {self.input_name!r} has rank {len(self.input_shape)}; onnx-cam "
                f"explains {layouts} inputs, (N, T) integer token ids and (N, T) float samples."
            )
        outputs = [o.name for o in proto.graph.output]
        if not outputs:
            raise UnsupportedModelError("The model's graph declares no output, so it has no "
                                        "score to explain. Re-export the model.")
        self.output_name = output or outputs[0]
        if self.output_name not in outputs:
            raise UnsupportedModelError(
                f"The model has no output {self.output_name!r}; its outputs are {outputs}."
            )
        self._graphs: OnceCache[gs.Graph] = OnceCache()
        graph = self.graph(self.default_spatial_shape())
        # a NonMaxSuppression selects boxes and has no gradient: its scores input is explained
        scored, self.nms_boxes = before_nms(graph, self.output_name)
        self.head, self.score_name = _find_head(graph, scored)
        self.head_axis = _head_axis(graph, self.score_name, self.head)
        score_shape = graph.tensors()[self.score_name].shape
        if score_shape is None or len(score_shape) < 1 or not all(
                isinstance(d, int) for d in score_shape[1:]):
            raise UnsupportedModelError(
                f"The score tensor {self.score_name!r} has shape {score_shape}; onnx-cam needs "
                "(N, classes), (N,) or dense (N, ...) scores of known size. Choose the output "
                f"that holds them with output= (the model's outputs: {outputs})."
            )
        self.score_shape = tuple(score_shape[1:])  # nominal: dense outputs follow the input
        # a dense output (segmentation, detection) is explained through a target object
        self.dense = len(self.score_shape) > 1
        self.num_classes = int(np.prod(self.score_shape)) if self.score_shape else 1
        user_grid = grids.check_override(grid, prefix_tokens, self.spatial_rank)
        self.grids, self.ungridded = ({}, set()) if (
            self.channels_last or self.tokens or self.raw_signal) else grids.grid_layers(
            graph, self.input_name, self.spatial_rank, user_grid)
        self.layers = _candidate_layers(graph, self.input_name, self.score_name, self.layer_map,
                                        self.channels_last, self.spatial_rank + 2,
                                        self.grids, self.ungridded)
        if self.side_inputs:  # only the layers computed from the explained input
            below = differentiable_closure(graph, {self.input_name})
            self.layers = [layer for layer in self.layers if layer.tensor in below]
        self.layer_axes = {layer.tensor: layer.axes for layer in self.layers
                           if layer.axes is not None}
        self.token_views = {layer.tensor: layer.tokens for layer in self.layers
                            if layer.tokens is not None}
        self.layer_channels = {layer.tensor: layer.shape[1] for layer in self.layers}

    # ---- shapes -------------------------------------------------------------------------
    @property
    def spatial_rank(self) -> int:
        return len(self.input_shape) - (1 if self.tokens else 2)

    @property
    def channel_axis(self) -> int | None:
        """The channel axis of the model's input: 1, the last one if channels-last, None for
        token ids."""
        if self.tokens:
            return None
        return len(self.input_shape) - 1 if self.channels_last else 1

    @property
    def channels(self) -> int | None:
        return None if self.tokens else self.input_shape[self.channel_axis]

    @property
    def spatial_input_shape(self) -> tuple:
        """The input's spatial axes in order (T), (H, W) or (D, H, W), None where free."""
        if self.tokens:
            return self.input_shape[1:]
        return self.input_shape[1:-1] if self.channels_last else self.input_shape[2:]

    def spatial_of(self, x: np.ndarray) -> tuple[int, ...]:
        """The spatial shape of a checked input batch (channels first, or token ids)."""
        return tuple(x.shape[1:] if self.tokens else x.shape[2:])

    def default_spatial_shape(self) -> tuple[int, ...]:
        spatial = self.spatial_input_shape
        if any(d is None for d in spatial):
            # dynamic spatial axes: the catalogue is built on a nominal size; explain() builds
            # the graph again for each size it meets
            spatial = tuple(d if d is not None else 64 for d in spatial)
        return tuple(spatial)

    def graph(self, spatial_shape: tuple[int, ...]) -> gs.Graph:
        """The model's graph with the input's spatial axes fixed, shapes inferred, folded.

        Its input is always (N, C, *spatial): for a channels-last model a Transpose to the
        model's own layout follows it, so everything built on the graph reads and feeds
        channels-first arrays. Returns a fresh copy each call so callers may rewrite it.
        """
        key = tuple(spatial_shape)
        return self._graphs.get(key, lambda: self._prepare_graph(key)).copy()

    def _prepare_graph(self, spatial_shape: tuple[int, ...]) -> gs.Graph:
        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        inp = next(i for i in proto.graph.input if i.name == self.input_name)
        dims = inp.type.tensor_type.shape.dim
        dims[0].Clear()
        dims[0].dim_param = "N"
        spatial_dims = list(dims)[1:] if self.tokens or self.raw_signal else (
            list(dims)[1:-1] if self.channels_last else list(dims)[2:])
        for d, size in zip(spatial_dims, spatial_shape):
            d.Clear()
            d.dim_value = int(size)
        for side in proto.graph.input:  # inputs fed as given share the batch axis
            if side.name in self.side_inputs:
                first = side.type.tensor_type.shape.dim[0]
                first.Clear()
                first.dim_param = "N"
        what = f"for input spatial shape {spatial_shape}"
        # before anything evaluates part of the graph (data propagation included)
        safety.check_computed_sizes(proto, self.max_tensor_bytes, what)
        # not strict yet: a ceil_mode pool mis-sized by inference can clash further down
        graph = gs.import_onnx(_infer_shapes(proto, spatial_shape, strict=False))
        if self.channels_last:
            _channels_first_input(graph, self.input_name)
        if self.raw_signal:
            _one_channel_input(graph, self.input_name)
        float32_input(graph, self.input_name)
        ceil_pools_to_floor(graph)
        # constant folding runs parts of the graph in ONNX Runtime: check the shapes first
        safety.check_shapes(gs.export_onnx(graph, do_type_check=False), self.max_tensor_bytes,
                            what)
        # a quantised model keeps its weights' DequantizeLinear nodes (ONNX Runtime fuses them
        # with the op that reads them into an integer kernel)
        graph.fold_constants(error_ok=True, should_exclude_node=_dequantizes).cleanup().toposort()
        if resolve_batch_shapes(graph, batch="N"):  # e.g. x.reshape(x.shape[0], C, -1)
            graph.fold_constants(error_ok=True,
                                 should_exclude_node=_dequantizes).cleanup().toposort()
        if unroll_loops(graph, _has_rule, _fold):  # e.g. a Keras GRU as tf2onnx writes it
            graph.cleanup().toposort()
        # folding turns shape arithmetic into constants: inferring again fills in the shapes
        # that depended on it (e.g. a Slice whose bounds were computed, a pool after a Pad
        # whose pads were), so ceil_mode pools not sized before are rewritten now
        folded = gs.export_onnx(graph, do_type_check=False)
        del folded.graph.value_info[:]
        graph = gs.import_onnx(_infer_shapes(folded, spatial_shape, strict=False))
        if ceil_pools_to_floor(graph):
            folded = gs.export_onnx(graph, do_type_check=False)
            del folded.graph.value_info[:]
        return gs.import_onnx(_infer_shapes(folded, spatial_shape)).toposort()

    def score_shape_of(self, spatial_shape: tuple[int, ...]) -> tuple:
        """The score's shape after the batch axis for inputs of `spatial_shape` (a dense
        output of a model with dynamic spatial axes follows the input's size)."""
        if tuple(spatial_shape) == self.default_spatial_shape():
            return self.score_shape
        return tuple(self.graph(spatial_shape).tensors()[self.score_name].shape[1:])

    # ---- layers -------------------------------------------------------------------------
    def resolve_layer(self, name: str) -> Layer:
        """Find a candidate layer by display name, framework name, tensor name or node name."""
        for layer in self.layers:
            if name == layer.name or name in layer.aliases:
                return layer
        graph = self.graph(self.default_spatial_shape())
        tensor = self.layer_map.get(name, name)
        node = next((n for n in graph.nodes if n.name == name), None)
        if node is not None:
            tensor = node.outputs[0].name
        known = graph.tensors()
        hint = ", ".join(layer.name for layer in self.layers[:8])
        dequantized = next((layer for layer in self.layers
                            if tensor in layer.aliases and tensor != layer.tensor), None)
        if dequantized is not None:  # the float tensor before a QuantizeLinear
            raise LayerError(
                f"Layer {name!r} (tensor {tensor!r}) is quantised in this model, which never "
                f"holds its float value; layer {dequantized.name!r} is its dequantised value "
                "(what the quantised model computes). Name that layer.")
        if tensor in self.ungridded and tensor in known and len(known[tensor].shape or ()) == 3:
            raise LayerError(
                f"Layer {name!r} (tensor {tensor!r}, shape {known[tensor].shape}) looks like "
                "transformer tokens, but the search for its patch grid failed: the graph does "
                "not show how the patch embedding's positions became these tokens (onnx_cam."
                "grids follows Reshape / Transpose / Flatten / Concat / Slice). If its tokens "
                "are a grid after some prefix tokens, say so: Explainer(model, grid=(h, w), "
                f"prefix_tokens=p). Candidate layers, deepest first: {hint}.")
        if tensor in known:
            raise LayerError(
                f"Layer {name!r} (tensor {tensor!r}, shape {known[tensor].shape}) cannot be "
                "explained: a CAM layer needs channel and spatial axes (N, C, *spatial) and must "
                f"lie on the path to the score. Candidate layers, deepest first: {hint}."
            )
        if name in self.unverified_layers:
            nearest = self.unverified_layers[name]
            raise LayerError(
                f"Layer {name!r} is a module of the torch model, but no tensor of this export "
                "equals its output (checked against torch at export), so it is not offered. "
                + (f"The nearest module that is: {nearest!r}." if nearest
                   else f"Candidate layers, deepest first: {hint}.")
            )
        raise LayerError(
            f"Unknown layer {name!r}. Name a layer by framework name, ONNX tensor name or node "
            f"name; see Explainer.layers. Candidate layers, deepest first: {hint}."
        )


def _value_spec(value: onnx.ValueInfoProto) -> tuple[tuple, np.dtype | None]:
    """(shape with None where symbolic, numpy dtype or None) of a graph input."""
    tensor = value.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    try:
        return shape, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    except (KeyError, TypeError, ValueError):
        return shape, None


def spatial_inputs(proto: onnx.ModelProto, inputs: list) -> tuple[str, ...]:
    """The inputs a map can be drawn over, in graph order: (N, C, *spatial) floats (rank 3 to
    5) or (N, T) integer token ids from which a convolution is computed. A model's only input
    is always one ((N, T) float samples included)."""
    if len(inputs) == 1:
        return (inputs[0].name,)
    graph = gs.import_onnx(proto)
    convs = {n.outputs[0].name for n in graph.nodes if n.op in SPATIAL_OPS}
    found = []
    for value in inputs:
        shape, dtype = _value_spec(value)
        if len(shape) in (3, 4, 5) or (len(shape) == 2 and dtype is not None
                                       and dtype.kind in "iu"):
            if convs & differentiable_closure(graph, {value.name}):
                found.append(value.name)
    return tuple(found)


def explained_input(inputs: list, spatial: tuple[str, ...], name: str | None):
    """The graph input whose spatial axes the maps cover: `name`, else the only input, else the
    first spatial input (Model.input_chosen says whether that choice was the only one)."""
    by_name = {value.name: value for value in inputs}
    if name is not None:
        if name not in by_name:
            raise InputError(f"input={name!r} is not an input of the model; its inputs are "
                             f"{list(by_name)}.")
        return by_name[name]
    if len(inputs) == 1:
        return inputs[0]
    if not spatial:
        raise UnsupportedModelError(
            f"None of the model's inputs {list(by_name)} is an (N, C, *spatial) tensor or "
            "(N, T) token ids from which a convolution is computed. Name the input to explain "
            "with input=... (e.g. a (N, T) signal).")
    return by_name[spatial[0]]


def side_spec(value: onnx.ValueInfoProto) -> tuple[tuple, np.dtype]:
    """(shape, numpy dtype) of an input fed as given (shape: None where symbolic)."""
    shape, dtype = _value_spec(value)
    if dtype is None or not shape:
        raise UnsupportedModelError(
            f"The model input {value.name!r} is not a tensor with a batch axis (element type "
            f"{value.type.tensor_type.elem_type}, shape {shape}); onnx-cam feeds every input "
            "batch first. Re-export the model.")
    return shape, dtype


def _unverified_layers(text: str | None) -> dict[str, str]:
    """export_torch's names left out of the layer map -> the nearest kept name ("" if none);
    metadata that is not such a JSON object counts as none."""
    try:
        found = json.loads(text) if text else {}
    except ValueError:
        return {}
    if not isinstance(found, dict):
        return {}
    return {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, str)}


def _dequantizes(node: gs.Node) -> bool:
    return node.op == "DequantizeLinear"


def _fold(graph: gs.Graph) -> None:
    graph.fold_constants(error_ok=True, should_exclude_node=_dequantizes)


def _has_rule(op: str) -> bool:
    return op in RULES or op in NON_DIFFERENTIABLE


def _infer_shapes(proto: onnx.ModelProto, spatial_shape: tuple[int, ...],
                  strict: bool = True) -> onnx.ModelProto:
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(_shape_preserving_outputs(proto))
    try:
        return shape_inference.infer_shapes(proto, strict_mode=strict, data_prop=True)
    except Exception as exc:
        raise UnsupportedModelError(
            f"ONNX shape inference fails on this model for spatial shape {spatial_shape}: "
            f"{exc}. Check that the input size is one the model accepts."
        ) from None


# ops whose output has their first input's type and shape, which ONNX shape inference leaves
# untyped (so every tensor after them would be unknown)
_UNINFERRED_SAME_SHAPE = {"GroupNormalization"}


def _shape_preserving_outputs(proto: onnx.ModelProto) -> list:
    """Value infos for the outputs of _UNINFERRED_SAME_SHAPE nodes, inferred on a copy in
    which each such node is an Identity of its first input."""
    if not any(n.op_type in _UNINFERRED_SAME_SHAPE for n in proto.graph.node):
        return []
    stand_in = onnx.ModelProto()
    stand_in.CopyFrom(proto)
    outputs = set()
    for node in stand_in.graph.node:
        if node.op_type in _UNINFERRED_SAME_SHAPE and node.domain in ("", "ai.onnx"):
            outputs.add(node.output[0])
            identity = onnx.helper.make_node("Identity", node.input[:1], node.output[:1],
                                             node.name)
            node.CopyFrom(identity)
    inferred = shape_inference.infer_shapes(stand_in, strict_mode=False, data_prop=True)
    return [v for v in inferred.graph.value_info if v.name in outputs]


def _convs_read_last_axis(proto: onnx.ModelProto, input_name: str) -> bool:
    """True when the first convolution's channel axis is the input's last axis (a model
    converted from a channels-last framework, e.g. Keras through tf2onnx)."""
    try:
        graph = gs.import_onnx(shape_inference.infer_shapes(proto))
        rank = len(graph.tensors()[input_name].shape)
        axes = _trace_axes(graph, input_name)
    except Exception:
        return False
    for node in graph.nodes:
        if node.op in SPATIAL_OPS and node.inputs[0].name in axes:
            return axes[node.inputs[0].name][1] == rank - 1
    return False


def _channels_first_input(graph: gs.Graph, name: str) -> None:
    """Feed a channels-last graph from a (N, C, *spatial) input of the same name."""
    old = next(t for t in graph.inputs if t.name == name)
    rank = len(old.shape)
    perm = [0, *range(2, rank), 1]  # (N, C, *spatial) -> (N, *spatial, C)
    new = gs.Variable(name, dtype=old.dtype,
                      shape=[old.shape[0], old.shape[-1], *old.shape[1:-1]])
    old.name = f"{name}/onnx_cam_channels_last"
    graph.nodes.insert(0, gs.Node("Transpose", f"{name}/onnx_cam_to_channels_last",
                                  {"perm": perm}, [new], [old]))
    graph.inputs = [new if t is old else t for t in graph.inputs]


def _one_channel_input(graph: gs.Graph, name: str) -> None:
    """Feed a graph taking (N, T) samples from a (N, 1, T) input of the same name."""
    old = next(t for t in graph.inputs if t.name == name)
    new = gs.Variable(name, dtype=old.dtype, shape=[old.shape[0], 1, old.shape[1]])
    old.name = f"{name}/onnx_cam_samples"
    axis = gs.Constant(f"{name}/onnx_cam_channel_axis", np.asarray([1], np.int64))
    graph.nodes.insert(0, gs.Node("Squeeze", f"{name}/onnx_cam_to_samples", {}, [new, axis],
                                  [old]))
    graph.inputs = [new if t is old else t for t in graph.inputs]


def ceil_pools_to_floor(graph: gs.Graph) -> bool:
    """Rewrite ceil_mode pools as floor-mode pools with more end padding, same results;
    True when a pool was rewritten.

    ONNX Runtime (like torch) drops a last window that would start in the end padding; ONNX
    shape inference before opset 22 keeps it, so every shape after such a pool would be
    wrong. Extra end padding is never read by MaxPool, nor counted by AveragePool without
    count_include_pad, so the floor-mode node computes exactly what ONNX Runtime computed.
    """
    rewritten = False
    for node in graph.nodes:
        if node.op not in ("MaxPool", "AveragePool") or not node.attrs.get("ceil_mode", 0):
            continue
        if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", ""):
            continue
        dims = node.inputs[0].shape
        if dims is None or not all(isinstance(d, int) for d in dims[2:]):
            continue
        in_dims, n = dims[2:], len(dims) - 2
        kernel = node.attrs["kernel_shape"]
        strides = node.attrs.get("strides", [1] * n)
        dilations = node.attrs.get("dilations", [1] * n)
        pads = list(node.attrs.get("pads", [0] * (2 * n)))
        dropped = False
        for i in range(n):
            reach = (kernel[i] - 1) * dilations[i] + 1
            span = in_dims[i] + pads[i] + pads[n + i] - reach
            count = -(-span // strides[i]) + 1           # ceil mode, as shape inference
            if (count - 1) * strides[i] >= in_dims[i] + pads[i]:
                count -= 1                               # the window ONNX Runtime drops
                dropped = True
            if span // strides[i] + 1 == count:
                continue                                 # floor mode already gives it
            pads[n + i] = max((count - 1) * strides[i] + reach - in_dims[i] - pads[i], 0)
        if not dropped:
            continue  # shape inference agrees with ONNX Runtime: leave the node as it is
        if any(end >= k for end, k in zip(pads[n:], kernel)):
            raise UnsupportedModelError(
                f"{node.op} node {node.name!r} uses ceil_mode in a way onnx-cam cannot rewrite "
                "in floor mode (ONNX shape inference and ONNX Runtime size its output "
                "differently). Export the pool without ceil_mode."
            )
        original = list(node.attrs.get("pads", [0] * (2 * n)))
        if node.op == "AveragePool" and node.attrs.get("count_include_pad", 0) and any(
                new > old for new, old in zip(pads[n:], original[n:])):
            # counted padding beyond the original would change the last windows' divisors
            raise UnsupportedModelError(
                f"AveragePool node {node.name!r} uses ceil_mode with count_include_pad and "
                "drops its last window, which ONNX shape inference sizes differently from ONNX "
                "Runtime. Export the pool without ceil_mode (pad explicitly instead)."
            )
        node.attrs["pads"] = pads
        node.attrs["ceil_mode"] = 0
        rewritten = True
    return rewritten


def _find_head(graph: gs.Graph, output_name: str) -> tuple[str | None, str]:
    """The final Softmax / LogSoftmax / Sigmoid, if any, and the tensor before it (seen through
    Identity and Casts from 16-bit floats, e.g. a float16 model's cast to a float32 output)."""
    tensor = graph.tensors()[output_name]
    while tensor.inputs and (tensor.inputs[0].op == "Identity" or (
            tensor.inputs[0].op == "Cast" and is_float(tensor.dtype)
            and is_half(tensor.inputs[0].inputs[0].dtype))):
        tensor = tensor.inputs[0].inputs[0]
    if tensor.inputs and tensor.inputs[0].op in HEADS:
        node = tensor.inputs[0]
        return node.op, node.inputs[0].name
    return None, tensor.name


def _head_axis(graph: gs.Graph, score: str, head: str | None) -> int:
    """The axis a final Softmax / LogSoftmax normalises (1 without one)."""
    node = next((n for n in graph.tensors()[score].outputs if n.op == head), None)
    if node is None or head == "Sigmoid":
        return 1
    return int(node.attrs.get("axis", -1))


def node_inputs(node: gs.Node) -> list:
    """The node's inputs and the outer tensors its subgraphs (Loop, Scan, If bodies) read.

    tf2onnx turns a Keras GRU into a Loop whose body reads the sequence from the enclosing
    graph: the dependency is not among the Loop's inputs.
    """
    tensors = list(node.inputs)
    for value in node.attrs.values():
        for sub in value if isinstance(value, list) else [value]:
            if isinstance(sub, gs.Graph):
                inner = {t.name for t in sub.inputs}
                inner.update(t.name for n in sub.nodes for t in n.outputs)
                tensors.extend(t for n in sub.nodes for t in node_inputs(n)
                               if t.name not in inner and not isinstance(t, gs.Constant))
    return tensors


def differentiable_closure(graph: gs.Graph, sources: set[str]) -> set[str]:
    """Names of the float tensors that depend differentiably on any of `sources`."""
    active = set(sources)
    for node in graph.nodes:  # graph is topologically sorted
        if node.op in NON_DIFFERENTIABLE:
            continue
        if any(t.name in active for t in node_inputs(node)):
            if node.op in INTEGER_PATH_OPS:  # the integers of a quantised tensor
                active.add(node.outputs[0].name)
                continue
            for out in node.outputs:  # an omitted optional output has the name ""
                if out.name and (out.dtype is None or is_float(out.dtype)):
                    active.add(out.name)
    return active


def ancestors(graph: gs.Graph, target: str, within: set[str]) -> set[str]:
    """Tensors in `within` from which `target` is reachable through tensors in `within`."""
    tensors = graph.tensors()
    seen, stack = set(), [target]
    while stack:
        name = stack.pop()
        if name in seen or name not in within:
            continue
        seen.add(name)
        for node in tensors[name].inputs:
            stack.extend(t.name for t in node_inputs(node) if t.name in within)
    return seen


def _candidate_layers(graph: gs.Graph, input_name: str, score: str,
                      layer_map: dict[str, str], channels_last: bool, rank: int,
                      grid_layers: dict | None = None, ungridded: set | None = None
                      ) -> list[Layer]:
    """Tensors (N, C, *spatial) of `rank` axes downstream of a Conv and upstream of the score.

    In a channels-last model every tensor's axes are traced from the input (_trace_axes), so a
    layer is found and described as (N, C, *spatial) whatever layout the converter gave it.
    In a channels-first model, tensors whose axes were rearranged after the input are layers
    only as the grids found for them (onnx_cam.grids: transformers' tokens, Swin's (N, H, W, C)).
    """
    grid_layers, ungridded = grid_layers or {}, ungridded or set()
    conv_outputs = {n.outputs[0].name for n in graph.nodes if n.op in SPATIAL_OPS}
    reaches_score = ancestors(graph, score, differentiable_closure(graph, conv_outputs))
    aliases: dict[str, list[str]] = {}
    for framework_name, tensor in layer_map.items():
        if not framework_name:  # the root module (a dense model's output): its tensor name shows
            continue
        aliases.setdefault(tensor, []).append(framework_name)
    # a quantised model's layer is the dequantised tensor, also named after the float tensor
    # it quantises (which the int8 model does not compute)
    sources = dequantized_sources(graph)
    hidden = {source.name for source in sources.values()} | rescaling_steps(graph)
    traced = _trace_axes(graph, input_name) if channels_last else None
    batch = graph.tensors()[input_name].shape[0]  # the symbol N
    found: set[str] = set()
    per_node = []
    for node in graph.nodes:
        outs = []
        for out in node.outputs:
            if (out.name not in reaches_score or out.shape is None or out.name in hidden
                    or STEP in out.name  # one iteration of an unrolled loop
                    or (out.dtype is not None and not is_float(out.dtype))):
                continue
            axes = tokens = None
            if out.name in grid_layers:
                found_grid = grid_layers[out.name]
                shape, axes, tokens = found_grid.shape, found_grid.axes, found_grid.tokens
                if axes == tuple(range(rank)):
                    axes = None  # (N, C, *spatial) again
                elif node.op in LAYOUT_OPS and out.name not in aliases and any(
                        t.name in found for t in node.inputs):
                    continue  # the same values as a layer already listed, rearranged
            elif traced is None:
                if len(out.shape) != rank or out.name in ungridded or batch in out.shape[1:]:
                    continue  # e.g. a loop's (T, N, H) states: not (N, C, *spatial)
                shape = tuple(out.shape)
            else:
                axes = traced.get(out.name)
                named = out.name in aliases
                if axes is None or sorted(a for a in axes if a is not None) != list(range(rank)):
                    continue  # axes unknown, or not all of (N, C, *spatial)
                if len(axes) != rank and not named:
                    continue  # e.g. the 2D Conv inside a Conv1D: listed by its squeezed output
                if node.op in LAYOUT_OPS and not named and any(t.name in found
                                                               for t in node.inputs):
                    continue  # the same values as a layer already listed, rearranged
                shape = tuple(out.shape[axes.index(k)] for k in range(rank))
                if axes == tuple(range(rank)):
                    axes = None
            if all(isinstance(d, int) and d == 1 for d in shape[2:]):
                continue
            found.add(out.name)
            outs.append((out.name, shape, axes, tokens))
        per_node.append((node, outs))
    layers = []
    for node, outs in reversed(per_node):
        for name, shape, axes, tokens in outs:
            names = sorted(aliases.get(name, []), key=lambda s: (s.count("."), len(s)))
            op, tensors = node.op, (name,)
            if name in sources:  # the shorter of the two tensor names shows
                op, tensors = sources[name].inputs[0].op, (name, sources[name].name)
            display = names[0] if names else min(tensors, key=len)
            layers.append(Layer(display, name, op, shape, (*names, *tensors, node.name), axes,
                                tokens))
    return layers


def _trace_axes(graph: gs.Graph, input_name: str) -> dict[str, tuple]:
    """For each tensor reached from the input, which axis of the input's (N, C, *spatial) each
    of its axes is (None: a unit axis inserted on the way).

    Followed through Transpose; Squeeze, Unsqueeze, Reshape and Flatten that only add or drop
    unit axes; ops that compute on (N, C, *spatial) (Conv, pools, normalisations: their output
    keeps their input's axes); and any other op whose output has the rank of the first traced
    tensor it reads (elementwise ops, Pad, Slice, Concat, reductions keeping their axes,
    MatMul over the last axis). A dropped unit axis of the input's is left out, and put back
    by a Concat stacking such pieces along a new axis (_stacked_axes). Other tensors (after
    an LSTM, a general Reshape, a Gather or ReverseSequence...) are not traced and cannot be
    layers of a channels-last model.
    """
    tensors = graph.tensors()
    axes = {input_name: tuple(range(len(tensors[input_name].shape)))}
    for node in graph.nodes:  # topologically sorted
        if node.op in NON_DIFFERENTIABLE or node.op in REORDERING_OPS:
            continue
        source = next((t for t in node.inputs if t.name in axes), None)
        if source is None:
            continue
        for out in node.outputs:
            traced = _axes_through(node, source, axes[source.name], out)
            if node.op == "Concat" and traced is not None:
                traced = _stacked_axes(node, traced, axes, len(axes[input_name]))
            if traced is not None:
                axes[out.name] = traced
    return axes


def _stacked_axes(node: gs.Node, traced: tuple, axes: dict[str, tuple], rank: int) -> tuple:
    """The axes of a Concat along an inserted unit axis of pieces that each lack one axis of
    the input (the steps of an unrolled loop, each one position of that axis): that axis."""
    k = node.attrs.get("axis", 0) % len(traced)
    missing = set(range(rank)) - set(traced)
    if traced[k] is not None or len(missing) != 1 or any(
            axes.get(t.name) != traced for t in node.inputs):
        return traced
    return (*traced[:k], missing.pop(), *traced[k + 1:])


def _axes_through(node: gs.Node, source, axes: tuple, out) -> tuple | None:
    if node.op == "Transpose":
        perm = node.attrs.get("perm", list(reversed(range(len(axes)))))
        return tuple(axes[p] for p in perm)
    if out.shape is None:
        return None
    if node.op in ("Squeeze", "Unsqueeze", "Reshape", "Flatten"):
        return _through_unit_axes(axes, source.shape, out.shape)
    return axes if len(out.shape) == len(axes) else None


def _through_unit_axes(axes: tuple, in_shape, out_shape) -> tuple | None:
    """The axes after a reshape that only inserts or drops unit axes; None for any other."""
    if in_shape is None:
        return None

    def unit(d):
        return isinstance(d, int) and d == 1

    # a unit axis of (N, C, *spatial) itself is dropped from the axes: such a tensor is never
    # a layer, but the steps of an unrolled loop are stacked back (_stacked_axes)
    kept = [(a, d) for a, d in zip(axes, in_shape) if not unit(d)]
    if [d for _, d in kept] != [d for d in out_shape if not unit(d)]:
        return None
    order = iter(a for a, _ in kept)
    return tuple(None if unit(d) else next(order) for d in out_shape)
