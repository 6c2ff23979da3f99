"""Rewrite a model into one that returns score, activations and gradients in one run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..model import Model
from .autodiff import add_gradients, seed_from_prediction
from .builder import GradBuilder

SEED = "onnx_cam_seed"
SCORE = "onnx_cam_score"


@dataclass(frozen=True)
class CamModel:
    """A rewritten model and the names of what it returns."""

    proto: onnx.ModelProto
    input_name: str
    seed_name: str | None          # None: the seed is the one-hot predicted class
    score_name: str
    activation_names: tuple[str, ...]
    gradient_names: tuple[str, ...]


def build_cam_model(model: Model, layers: list[str], spatial_shape: tuple[int, ...],
                    seed_from: str = "input") -> CamModel:
    """Expose `layers` and d(seed . score)/d(layer) as outputs.

    seed_from="input" adds a float input shaped like the score; "prediction" computes a
    one-hot seed on each item's arg-max inside the graph, so the predicted class is explained
    without a second run.
    """
    graph = model.graph(spatial_shape)
    tensors = graph.tensors()
    score = tensors[model.score_name]
    builder = GradBuilder(graph, model.opset)
    if seed_from == "input":
        seed = gs.Variable(SEED, dtype=np.float32, shape=list(score.shape))
        graph.inputs.append(seed)
    else:
        seed = seed_from_prediction(builder, score)
    grads = add_gradients(builder, score, seed, list(layers))
    score_out = _expose(graph, score, SCORE)
    acts, grad_names = [], []
    for i, name in enumerate(layers):
        acts.append(_expose(graph, tensors[name], f"onnx_cam_activation_{i}").name)
        grad_names.append(_expose(graph, grads[name], f"onnx_cam_gradient_{i}",
                                  tensors[name].shape).name)
    graph.outputs = [score_out] + [graph.tensors()[n] for n in acts + grad_names]
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    proto = gs.export_onnx(graph, do_type_check=False)
    proto.ir_version = model.proto.ir_version
    del proto.metadata_props[:]
    return CamModel(proto, model.input_name, SEED if seed_from == "input" else None,
                    score_out.name, tuple(acts), tuple(grad_names))


def _expose(graph: gs.Graph, tensor, name: str, shape=None) -> gs.Variable:
    """An Identity copy of `tensor` under a fixed output name (one tensor may serve twice)."""
    out = gs.Variable(name, dtype=np.float32, shape=shape or tensor.shape)
    graph.nodes.append(gs.Node("Identity", f"{name}/expose", inputs=[tensor], outputs=[out]))
    return out
