"""Rewrite a model into one that returns score, activations and gradients in one run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..model import Model
from .autodiff import add_gradients, hessian_vector_products, seed_from_prediction
from .builder import GradBuilder
from .ties import add_near_tie_count

SEED = "onnx_cam_seed"
SCORE = "onnx_cam_score"
NEAR_TIES = "onnx_cam_near_ties"


@dataclass(frozen=True)
class CamModel:
    """A rewritten model and the names of what it returns."""

    proto: onnx.ModelProto
    input_name: str
    seed_name: str | None          # None: the seed is the one-hot predicted class
    score_name: str
    activation_names: tuple[str, ...]
    gradient_names: tuple[str, ...]
    near_ties_name: str | None = None  # (N,) near-tie count on the gradient's path
    hvp_names: tuple[str, ...] = ()    # per layer: Hessian of the score x the activations


SCORES = ("logits", "log_probs", "probs", "rest")


@dataclass(frozen=True)
class CamOutputs:
    """What a rewritten model returns besides logits and activations (also a cache key).

    score: what is differentiated: the logits before the model's final softmax / sigmoid,
    their log-probabilities, the probabilities, or "rest" (logits + log-probabilities: the
    ReST score z_t + log p_t of ShapleyCAM's paper). gradients: d(seed . score)/d(layer)
    (False: gradient-free methods only). tie_tolerance: per row, the near-ties on the
    gradient's path (onnx_cam.graph.ties). second_order: per layer, H A, the Hessian of
    seed . score at the layer times the layer's activations (ShapleyCAM; needs gradients).
    """

    score: str = "logits"
    gradients: bool = True
    tie_tolerance: float | None = None
    second_order: bool = False


def build_cam_model(model: Model, layers: list[str], spatial_shape: tuple[int, ...],
                    seed_from: str = "input", outputs: CamOutputs = CamOutputs()) -> CamModel:
    """Expose the logits, `layers` and what `outputs` asks for as outputs.

    seed_from="input" adds a float input shaped like the logits; "prediction" computes a
    one-hot seed on each item's arg-max inside the graph, so the predicted class is explained
    without a second run.
    """
    graph = model.graph(spatial_shape)
    tensors = graph.tensors()
    builder = GradBuilder(graph, model.opset)
    logits = builder.float32(_as_matrix(builder, tensors[model.score_name]))
    differentiated = _score(builder, logits, model.head, outputs.score)
    if seed_from == "input":
        seed = gs.Variable(SEED, dtype=np.float32, shape=list(logits.shape))
        graph.inputs.append(seed)
    elif outputs.gradients:  # a dense output's one-hot table would be (F, F): built only if used
        seed = seed_from_prediction(builder, logits)
    grads = add_gradients(builder, differentiated, seed, list(layers)) if outputs.gradients else {}
    hvps = {}
    if outputs.second_order:
        hvps = hessian_vector_products(builder, grads, {name: tensors[name] for name in layers})
        graph = builder.graph  # shapes were inferred into a new graph: look tensors up again
        tensors = graph.tensors()
        logits, differentiated = tensors[logits.name], tensors[differentiated.name]
        grads = {name: tensors[grad.name] for name, grad in grads.items()}
    score_out = expose(graph, logits, SCORE)
    acts, grad_names, hvp_names = [], [], []
    for i, name in enumerate(layers):
        # a layer in another layout (channels-last) is returned as (N, C, *spatial)
        view = _layer_view(builder, model, name, builder.float32(tensors[name]),
                           tensors[name].shape)
        acts.append(expose(graph, view, f"onnx_cam_activation_{i}").name)
        for store, values, label in ((grad_names, grads, "gradient"), (hvp_names, hvps, "hvp")):
            if name in values:
                out = _layer_view(builder, model, name, values[name], tensors[name].shape)
                store.append(expose(graph, out, f"onnx_cam_{label}_{i}", view.shape).name)
    ties = None
    if outputs.tie_tolerance is not None:
        count = add_near_tie_count(builder, differentiated, list(layers), outputs.tie_tolerance)
        ties = expose(graph, count, NEAR_TIES, [logits.shape[0]])
    graph.outputs = [score_out] + [graph.tensors()[n] for n in acts + grad_names + hvp_names]
    graph.outputs += [ties] if ties is not None else []
    return CamModel(export(model, graph), model.input_name, SEED if seed_from == "input" else None,
                    score_out.name, tuple(acts), tuple(grad_names),
                    None if ties is None else ties.name, tuple(hvp_names))


def _as_matrix(builder: GradBuilder, logits) -> gs.Variable:
    """Scores as (N, K): a single regression output (N,) becomes (N, 1), a dense output
    (N, *dims) (N, prod(dims)) (its targets' seeds are flattened alike)."""
    if len(logits.shape) == 2:
        return logits
    if len(logits.shape) > 2:
        flat = builder.op("Reshape", [logits, builder.ints([0, -1])])
        flat.shape = [logits.shape[0], int(np.prod(logits.shape[1:]))]
        return flat
    column = builder.op("Unsqueeze", [logits, builder.ints([1])])
    column.shape = [logits.shape[0], 1]
    return column


def _score(builder: GradBuilder, logits, head: str | None, score: str) -> gs.Variable:
    if score == "logits":
        return logits
    sigmoid = head == "Sigmoid"
    if score == "probs":
        out = (builder.op("Sigmoid", [logits]) if sigmoid
               else builder.op("Softmax", [logits], {"axis": 1}))
    else:
        out = _log_probs(builder, logits, sigmoid)
        if score == "rest":
            out.shape = list(logits.shape)
            out = builder.op("Add", [logits, out])
    out.shape = list(logits.shape)
    return out


def _log_probs(builder: GradBuilder, logits, sigmoid: bool) -> gs.Variable:
    if sigmoid:  # log(sigmoid(z)) = -softplus(-z)
        return builder.op("Neg", [builder.op("Softplus", [builder.op("Neg", [logits])])])
    return builder.op("LogSoftmax", [logits], {"axis": 1})


def _layer_view(builder: GradBuilder, model: Model, layer: str, tensor, shape) -> gs.Variable:
    """`tensor` (layer's activations or gradient) as (N, C, *spatial): channels first, a
    token axis read as its patch grid (onnx_cam.grids)."""
    if layer in model.token_views:
        return model.token_views[layer].view(builder, tensor, model.layer_channels[layer])
    return channels_first(builder, tensor, model.layer_axes.get(layer), shape)


def channels_first(builder: GradBuilder, tensor, axes: tuple | None, shape) -> gs.Variable:
    """`tensor` (shaped `shape`) as (N, C, *spatial): drop the unit axes marked None in `axes`
    (see Layer.axes), then transpose. Unchanged when `axes` is None."""
    if axes is None:
        return tensor
    units = [i for i, a in enumerate(axes) if a is None]
    kept = [a for a in axes if a is not None]
    if units:
        tensor = builder.op("Squeeze", [tensor, builder.ints(units)])
    perm = [kept.index(k) for k in range(len(kept))]
    if perm != sorted(perm):
        tensor = builder.op("Transpose", [tensor], {"perm": perm})
    tensor.shape = [shape[axes.index(k)] for k in range(len(kept))]
    return tensor


def channels_first_inverse(graph: gs.Graph, source: gs.Variable, target: gs.Variable,
                           axes: tuple) -> None:
    """Nodes computing `target` (a tensor in the layout `axes`) from `source`, its
    (N, C, *spatial) view: the inverse of channels_first."""
    units = [i for i, a in enumerate(axes) if a is None]
    kept = [a for a in axes if a is not None]
    tensor = source
    if kept != sorted(kept):
        moved = gs.Variable(f"{target.name}/onnx_cam_transposed", dtype=np.float32)
        graph.nodes.append(gs.Node("Transpose", f"{target.name}/onnx_cam_transpose",
                                   {"perm": kept}, [tensor], [moved]))
        tensor = moved
    if units:
        axes_const = gs.Constant(f"{target.name}/onnx_cam_unit_axes", np.asarray(units, np.int64))
        graph.nodes.append(gs.Node("Unsqueeze", f"{target.name}/onnx_cam_unsqueeze", {},
                                   [tensor, axes_const], [target]))
    else:
        graph.nodes.append(gs.Node("Identity", f"{target.name}/onnx_cam_identity", {},
                                   [tensor], [target]))


def export(model: Model, graph: gs.Graph) -> onnx.ModelProto:
    """The rewritten graph as a model: unused nodes dropped, the original's IR version, and
    none of its metadata (the layer map names tensors of the original graph)."""
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    proto = gs.export_onnx(graph, do_type_check=False)
    proto.ir_version = model.proto.ir_version
    del proto.metadata_props[:]
    return proto


def expose(graph: gs.Graph, tensor, name: str, shape=None) -> gs.Variable:
    """An Identity copy of `tensor` under a fixed output name (one tensor may serve twice)."""
    out = gs.Variable(name, dtype=np.float32, shape=shape or tensor.shape)
    graph.nodes.append(gs.Node("Identity", f"{name}/expose", inputs=[tensor], outputs=[out]))
    return out
