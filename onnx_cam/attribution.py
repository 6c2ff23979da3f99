"""Input-level methods in an explain call: gradient sessions at the model input, batching
within the memory budget, and the [0, 1] view of each attribution.

The gradient comes from the same reverse-mode rewriter as the CAMs (add_gradients with the
input, or a token model's embedding output, as target), in a graph of its own per (input
size, score, ReLU rule, bias targets), cached on the Explainer.

The view for figures: the attribution summed over channels (token models: over the
embedding axis), its absolute value, min-max normalised per row (Captum's "absolute_value"
visualisation also sums the channels and takes the absolute value, then divides by a
cumulative-sum threshold instead); score ranges are that absolute sum's (min, max), as for
CAMs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from . import kernels, numerics
from .cam_runs import layer_values
from .errors import MemoryBudgetError, MethodError
from .graph.cam_model import export
from .graph.input_gradients import (
    GradientModel,
    build_gradient_model,
    embedding_output,
)
from .graph.rules.guided import RELU_RULES
from .memory import RUNTIME_OVERHEAD, gib, memory_budget, run_footprint
from .methods import InputBatch, InputMethod
from .model import Layer, Model
from .rollout import attention_runner
from .runtime import make_session
from .runtime import run as run_session
from .side_inputs import SideInputs, side_feeds

if TYPE_CHECKING:
    from .explainer import Explainer


@dataclass
class InputResults:
    """What explain() keeps of its input-level methods, per method name."""

    attributions: dict[str, np.ndarray] = field(default_factory=dict)
    raws: dict[str, np.ndarray] = field(default_factory=dict)    # |channel sum|
    cams: dict[str, np.ndarray] = field(default_factory=dict)    # raws scaled to [0, 1]
    ranges: dict[str, np.ndarray] = field(default_factory=dict)
    infos: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


class _Runner:
    """One gradient model's session, run in chunks of at most `batch` inputs."""

    def __init__(self, gradient_model: GradientModel, session, batch: int, model: Model):
        self.model, self.session, self.batch = gradient_model, session, batch
        self.explainer_model = model
        self.outputs = [gradient_model.explained_name, gradient_model.gradient_name,
                        *gradient_model.target_gradient_names]

    def __call__(self, x: np.ndarray, seeds: np.ndarray,
                 side: SideInputs | None = None) -> list[np.ndarray]:
        """(explained score (m, K), gradient at the point, gradients at the targets); `side`:
        the inputs fed as given (one item's, or one per input)."""
        parts = []
        for start in range(0, len(x), self.batch):
            feeds = {self.model.point_name: np.ascontiguousarray(x[start:start + self.batch],
                                                                 np.float32),
                     self.model.seed_name: np.ascontiguousarray(
                         seeds[start:start + self.batch], np.float32),
                     **side_feeds(self.explainer_model, side, len(x), start,
                                  min(len(x), start + self.batch))}
            parts.append(run_session(self.session, self.outputs, feeds))
        return [np.concatenate(p) for p in zip(*parts)]


def bias_targets(graph: gs.Graph) -> list[tuple[str, np.ndarray]]:
    """(output tensor, bias per channel) of every Conv with a bias and every
    BatchNormalization whose output has spatial axes (FullGrad's bias terms; a
    BatchNormalization's bias is B - mean * scale / sqrt(var + eps))."""
    found = []
    for node in graph.nodes:
        out = node.outputs[0]
        if out.shape is None or len(out.shape) < 3:
            continue
        params = node.inputs[1:]
        if not all(isinstance(p, gs.Constant) for p in params):
            continue
        if node.op == "Conv" and len(params) == 2:
            bias = params[1].values
        elif node.op == "BatchNormalization":
            scale, shift, mean, var = (p.values.astype(np.float64) for p in params[:4])
            eps = node.attrs.get("epsilon", 1e-5)
            bias = shift - mean * scale / np.sqrt(var + eps)
        else:
            continue
        found.append((out.name, np.asarray(bias, np.float32)))
    return found


class _Sessions:
    """Gradient and embedding sessions of one Explainer, built once each."""

    def __init__(self, explainer: Explainer):
        self.explainer = explainer
        self.model: Model = explainer.model

    def gradient(self, spatial: tuple, score: str, relu_rule: str | None, biases: bool):
        def build():
            model = self.model
            targets = []
            if biases:
                targets = bias_targets(model.graph(spatial))
            overrides = {"Relu": RELU_RULES[relu_rule]} if relu_rule else None
            gm = build_gradient_model(model, spatial, score, tuple(t for t, _ in targets),
                                      overrides)
            session = make_session(gm.proto, self.explainer.runtime)
            return gm, session, run_footprint(gm.proto), [b for _, b in targets]
        key = ("input_gradient", spatial, score, relu_rule, biases)
        return self.explainer._input_sessions.get(key, build)

    def embedding(self, spatial: tuple):
        """A session from token ids to the embedding output."""
        def build():
            graph = self.model.graph(spatial)
            point = embedding_output(self.model, graph)
            graph.inputs = [t for t in graph.inputs if t.name == self.model.input_name]
            graph.outputs = [point]
            proto = export(self.model, graph)
            return point.name, make_session(proto, self.explainer.runtime)
        return self.explainer._input_sessions.get(("embedding", spatial), build)


def attribute_inputs(explainer: Explainer, rows: np.ndarray, seeds: np.ndarray,
                     items: np.ndarray, methods: Sequence[InputMethod], flags: np.ndarray, *,
                     score: str, batch_size: int, layers: list[Layer],
                     progress=None) -> InputResults:
    """Run every input-level method over `rows` (checked inputs, one per explained row) with
    `seeds` (rows, K); adds the rows' map flags to `flags` in place."""
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise MethodError(f"methods= names {names}: each input-level method once per call "
                          "(its results are kept under its name).")
    model = explainer.model
    tokens = model.tokens
    if tokens and any(m.relu_rule is not None for m in methods):
        raise MethodError(f"{[m.name for m in methods if m.relu_rule]} change the ReLU "
                          "backward rule, which is defined on float inputs; token models take "
                          "saliency, input_x_gradient, integrated_gradients or smoothgrad.")
    sessions = _Sessions(explainer)
    side = explainer._side  # the items' inputs fed as given (models with several inputs)
    spatial = model.spatial_of(rows)
    n = len(rows)
    embed = _embedder(sessions, spatial, batch_size) if tokens else None
    point_item = float((embed(rows[:1]) if tokens else rows[:1].astype(np.float32)).nbytes)
    results_bytes = n * len(methods) * (point_item + 12.0 * np.prod(spatial) + 8)
    out = InputResults()
    for stage, method in enumerate(methods):
        # rollout reads the attention tensors only: no input-gradient graph for it
        runner = _runner(explainer, sessions, spatial, score, method.relu_rule, False,
                         point_item, results_bytes, batch_size) if method.input_gradients else None
        run_batch = batch_size if runner is None else runner.batch
        per_call = max(1, run_batch // max(1, method.inputs_per_row()))
        if side is not None and (method.inputs_per_row() > 1 or not method.uses_gradients):
            per_call = 1  # its runs mix the copies of its rows: one item's side inputs each
        probe = explainer._probe(spatial, run_batch)
        parts, infos = [], []
        for start in range(0, n, per_call):
            idx = np.arange(start, min(n, start + per_call))
            xb, sb = rows[idx], seeds[idx]
            sideb = None if side is None else side.take(items[idx])
            batch = InputBatch(
                embed(xb) if tokens else xb, sb, probe.bound(sideb),
                gradients=lambda x, s, r=runner, d=sideb: r(x, s, d)[1],
                scores=lambda x, s, r=runner, d=sideb: np.einsum("ik,ik->i", r(x, s, d)[0], s),
                rows=idx, items=items[idx], tokens=tokens,
                layer_gradients=lambda layer, xb=xb, sb=sb, rb=run_batch, d=sideb: (
                    _layer_gradients(explainer, layer, layers, xb, sb, score, rb, d)),
                bias_gradients=lambda x, s, d=sideb: _bias_gradients(
                    explainer, sessions, spatial, score, x, s, point_item, results_bytes,
                    batch_size, d),
                attention=attention_runner(explainer, score, run_batch, sideb))
            attr = np.asarray(method.attribute(batch), np.float32)
            parts.append(_check_shape(method, attr, batch.inputs))
            infos.append(batch.info)
            if progress is not None:
                progress(stage * n + idx[-1] + 1, len(methods) * n)
        attribution = np.concatenate(parts)
        if tokens:
            attribution = attribution.sum(axis=-1)  # (rows, T, E) -> (rows, T)
        reduced = np.abs(attribution if tokens else attribution.sum(axis=1))
        cam, rng = kernels.normalize_minmax(reduced)
        # only the input's own flags apply: a layer's zero gradient says nothing here
        flags |= numerics.settle_maps(reduced, cam, rng,
                                      flags & numerics.RowFlag.INPUT_NONFINITE, False)
        out.attributions[method.name] = attribution
        out.raws[method.name], out.cams[method.name], out.ranges[method.name] = reduced, cam, rng
        out.infos[method.name] = {k: np.concatenate([np.asarray(i[k], np.float32)
                                                     for i in infos]) for k in infos[0]}
    return out


def _check_shape(method: InputMethod, attr: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    per_position = (inputs.shape[0], 1, *inputs.shape[2:])
    if attr.shape != inputs.shape and attr.shape != per_position:
        raise MethodError(f"{method.name} returned attributions shaped {attr.shape}; input "
                          f"methods return {inputs.shape} or {per_position}.")
    return attr


def _fit(explainer: Explainer, footprint, point_item: float, results: float,
         batch_size: int) -> int:
    """Inputs per run within the memory budget (at most batch_size)."""
    budget = memory_budget(explainer.max_memory)
    # numpy temporaries per input: the method's inputs, the gradient, copies while chunking
    run = footprint.scaled(RUNTIME_OVERHEAD).plus(fixed=results, per_item=6 * point_item)
    fits = run.max_batch(budget)
    if fits < 1:
        raise MemoryBudgetError(
            f"Input attributions of inputs of {gib(point_item)} each need about "
            f"{gib(run.bytes(1))} per run of one input (the results kept: {gib(results)}), "
            f"more than the memory budget of {gib(budget)}. Raise the budget (Explainer(..., "
            "max_memory='32GB') or ONNX_CAM_MAX_MEMORY), or explain fewer or smaller items.")
    return min(batch_size, fits)


def _runner(explainer, sessions: _Sessions, spatial, score, relu_rule, biases, point_item,
            results, batch_size) -> _Runner:
    gm, session, footprint, _ = sessions.gradient(spatial, score, relu_rule, biases)
    return _Runner(gm, session, _fit(explainer, footprint, point_item, results, batch_size),
                   explainer.model)


def _embedder(sessions: _Sessions, spatial: tuple, batch_size: int):
    name, session = sessions.embedding(spatial)
    feed = sessions.model.input_name

    def embed(ids: np.ndarray) -> np.ndarray:
        return np.concatenate([run_session(session, [name], {feed: ids[s:s + batch_size]})[0]
                               for s in range(0, len(ids), batch_size)])
    return embed


def _layer_gradients(explainer: Explainer, layer: str | None, layers: list[Layer],
                     x: np.ndarray, seeds: np.ndarray, score: str, batch: int,
                     side: SideInputs | None):
    """(activations, gradients) at one layer for these rows, with the true ReLU rule."""
    chosen = explainer._resolve_layers(layer) if layer is not None else layers
    if len(chosen) != 1:
        raise MethodError(f"This method needs one layer; the call names "
                          f"{[c.name for c in chosen]}. Configure it with layer=... .")
    return layer_values(explainer, chosen[0], x, seeds, score, side, batch)


def _bias_gradients(explainer, sessions: _Sessions, spatial, score, x, seeds, point_item,
                    results, batch_size, side: SideInputs | None):
    runner = _runner(explainer, sessions, spatial, score, None, True, point_item, results,
                     batch_size)
    biases = sessions.gradient(spatial, score, None, True)[3]
    _, gradient, *targets = runner(x, seeds, side)
    return gradient, list(zip(biases, targets))
