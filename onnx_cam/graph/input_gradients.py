"""Rewrite a model into one returning the explained score and its gradient at the input.

For float inputs the gradient is taken at the model input itself. For (N, T) token ids it
is taken at the embedding's output (the float tensor a Gather reads from the ids): the graph
is cut there and fed embeddings, so methods can move along them (integrated gradients,
noise) as they would along a float input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import UnsupportedModelError
from ..model import Model
from .autodiff import add_gradients
from .builder import GradBuilder
from .cam_model import SEED, _as_matrix, _score, export, expose

EXPLAINED = "onnx_cam_explained"
INPUT_GRADIENT = "onnx_cam_input_gradient"


@dataclass(frozen=True)
class GradientModel:
    """A rewritten model: (point[, seed]) -> explained score (N, K), d(seed . score)/d point,
    and the gradient at each extra target."""

    proto: onnx.ModelProto
    point_name: str                 # the input fed: the model input, or the embeddings
    seed_name: str
    explained_name: str             # the differentiated score (logits, log_probs or probs)
    gradient_name: str
    target_gradient_names: tuple[str, ...]


def embedding_output(model: Model, graph: gs.Graph) -> gs.Variable:
    """The float output of the one Gather that reads the token ids."""
    gathers = [n for n in graph.nodes if n.op == "Gather" and len(n.inputs) > 1
               and n.inputs[1].name == model.input_name]
    if len(gathers) != 1:
        raise UnsupportedModelError(
            f"Input attributions of a token model are taken at the embedding (a Gather reading "
            f"the token ids); this model has {len(gathers)} such Gather nodes. Use a CAM "
            "method instead.")
    return gathers[0].outputs[0]


def attribution_point(model: Model, spatial_shape: tuple[int, ...]) -> str:
    """The tensor input attributions are taken at: the input, or the embedding output."""
    if not model.tokens:
        return model.input_name
    return embedding_output(model, model.graph(spatial_shape)).name


def build_gradient_model(model: Model, spatial_shape: tuple[int, ...], score: str = "logits",
                         targets: tuple[str, ...] = (),
                         overrides: Mapping[str, Callable] | None = None) -> GradientModel:
    """The explained score and d(seed . score)/d point, where point is the model input (or
    the embedding output of a token model); `targets` are further tensors whose gradients
    are returned too; `overrides` swaps gradient rules for this build (add_gradients)."""
    graph = model.graph(spatial_shape)
    tensors = graph.tensors()
    if model.tokens:
        point = embedding_output(model, graph)
        for node in list(point.inputs):
            node.outputs = [o for o in node.outputs if o is not point]
        graph.inputs = [point, *(tensors[name] for name in model.side_inputs)]
        _check_only_through(graph, tensors[model.score_name], tensors[model.input_name])
    else:
        point = tensors[model.input_name]
    builder = GradBuilder(graph, model.opset)
    logits = _as_matrix(builder, tensors[model.score_name])
    differentiated = _score(builder, logits, model.head, score)
    seed = gs.Variable(SEED, dtype=np.float32, shape=list(logits.shape))
    graph.inputs.append(seed)
    grads = add_gradients(builder, differentiated, seed, [point.name, *targets], overrides)
    explained = expose(graph, differentiated, EXPLAINED, list(logits.shape))
    gradient = expose(graph, grads[point.name], INPUT_GRADIENT, point.shape)
    extra = [expose(graph, grads[name], f"onnx_cam_target_gradient_{i}", tensors[name].shape)
             for i, name in enumerate(targets)]
    graph.outputs = [explained, gradient, *extra]
    return GradientModel(export(model, graph), point.name, SEED, explained.name, gradient.name,
                         tuple(t.name for t in extra))


def _check_only_through(graph: gs.Graph, score: gs.Variable, ids: gs.Variable) -> None:
    """Refuse a token model whose score reads the ids other than through the embedding."""
    seen, stack = set(), [score]
    while stack:
        tensor = stack.pop()
        if tensor.name in seen or isinstance(tensor, gs.Constant):
            continue
        if tensor is ids:
            raise UnsupportedModelError(
                "The model reads the token ids again beside the embedding (e.g. a padding "
                "mask), so attributions at the embedding would miss that path. Use a CAM "
                "method instead.")
        seen.add(tensor.name)
        for node in tensor.inputs:
            stack.extend(node.inputs)
