"""Sub-models of the original graph: the whole forward pass to the score, or only its head."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import UnsupportedModelError
from ..model import Model
from .cam_model import SCORE, channels_first_inverse, export, expose
from .precision import fed_as_float32, float32_view


@dataclass(frozen=True)
class SubModel:
    proto: onnx.ModelProto
    input_names: tuple[str, ...]   # in the order the caller feeds them
    score_name: str


def _finish(model: Model, graph: gs.Graph, inputs: list, score) -> SubModel:
    out = expose(graph, float32_view(graph, score, f"{SCORE}/float32"), SCORE)
    graph.inputs, graph.outputs = inputs, [out]
    return SubModel(export(model, graph), tuple(t.name for t in inputs), out.name)


def score_model(model: Model, spatial_shape: tuple[int, ...],
                tensor: str | None = None) -> SubModel:
    """The model from its input to the score (the logits before any final softmax), or to
    another float `tensor` of its graph."""
    graph = model.graph(spatial_shape)
    tensors = graph.tensors()
    return _finish(model, graph, [tensors[model.input_name], *_side(model, tensors)],
                   tensors[tensor or model.score_name])


def _side(model: Model, tensors: dict) -> list:
    """The inputs fed as given beside the explained one (models with several inputs)."""
    return [tensors[name] for name in model.side_inputs]


def head_model(model: Model, layer: str, spatial_shape: tuple[int, ...]) -> SubModel:
    """The part of the model above `layer`: inputs (layer[, model input], *side inputs) ->
    score. A layer with an (N, C, *spatial) view is fed that view, a token layer its tensor
    as it is (prefix tokens included, batch first).

    Walking back from the score and stopping at the layer ends only at constants, the layer,
    or the model's input (a skip connection around the layer); the input is then fed too.
    """
    graph = model.graph(spatial_shape)
    tensors = graph.tensors()
    layer_tensor, model_input = tensors[layer], tensors[model.input_name]
    needs_input, seen = False, set()
    stack = [tensors[model.score_name]]
    while stack:
        tensor = stack.pop()
        if tensor.name in seen or tensor is layer_tensor or isinstance(tensor, gs.Constant):
            continue
        seen.add(tensor.name)
        if tensor is model_input:
            needs_input = True
        for node in tensor.inputs:
            stack.extend(node.inputs)
    for node in list(layer_tensor.inputs):
        node.outputs = [o for o in node.outputs if o is not layer_tensor]
    tokens = model.token_views.get(layer)
    if tokens is not None and tokens.roles.index(0) != 0:
        raise UnsupportedModelError(
            f"Layer {layer!r} holds tokens read as a patch grid with the batch on axis "
            f"{tokens.roles.index(0)}; the head above it is fed the tensor as it is, which "
            "onnx-cam does only with the batch first. Use a gradient method or scorecam on "
            "this layer.")
    axes = model.layer_axes.get(layer)
    if axes is not None:  # the head is fed the layer's (N, C, *spatial) view
        shape = [layer_tensor.shape[axes.index(k)] for k in range(len(axes) - axes.count(None))]
        view = gs.Variable(f"{layer}/onnx_cam_channels_first", np.float32, shape)
        channels_first_inverse(graph, view, layer_tensor, axes)
        layer_tensor = view
    inputs = [fed_as_float32(graph, layer_tensor)] + ([model_input] if needs_input else [])
    inputs += _side(model, tensors)
    return _finish(model, graph, inputs, tensors[model.score_name])
