"""An explain call's runs of the rewritten model (onnx_cam.graph.cam_model).

prepare turns a call's arguments into what runs: the checked input, the layers, the target
plan, the rows and the batch size the memory budget allows (onnx_cam.memory). run feeds the
rows to the CAM session batch by batch; seeded_values runs a seeded session of some tensors
on other inputs (attention rollouts), layer_values of one layer (aug_smooth's and Smooth
Grad-CAM++'s reruns, input attributions' layer gradients). Each takes the Explainer whose
cached sessions it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .concurrency import OnceCache
from .dense import DenseOutput
from .errors import InputError, TargetError
from .graph.cam_model import SCORES, CamOutputs
from .memory import explain_need, fit_batch, memory_budget
from .model import Layer
from .runtime import run as run_session
from .side_inputs import SideInputs, side_feeds, side_of
from .targets import TargetPlan, one_hot, plan_targets, seed_rows

if TYPE_CHECKING:
    from .explainer import Explainer


def prepare(explainer: Explainer, x, layers, targets, foils, batch_size: int,
            outputs: CamOutputs, maps: int = 0, nonfinite: str = "raise", cams: bool = True):
    """The checked input, the chosen layers, the target plan, the rows to run and the
    batch size the memory budget allows (`maps` methods kept per row; 0: activations and
    gradients are kept instead). cams=False: no CAM run follows (input attributions fit
    their own runs), so no CAM run is sized."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}.")
    if outputs.score not in SCORES:
        raise TargetError(f"score={outputs.score!r} is not one of {SCORES}.")
    x = explainer.check_input(x, nonfinite)
    chosen = explainer._resolve_layers(layers)
    seeded = not (targets is None and foils is None)  # as plan_targets decides

    def fit(rows: int) -> int:
        if not cams:
            return batch_size
        need = memory_need(explainer, x, chosen, seeded, outputs, maps, rows)
        return fit_batch(*need, memory_budget(explainer.max_memory), batch_size, rows,
                         tuple(x.shape[1:]), [layer.name for layer in chosen])

    batch_size = fit(len(x))
    plan = target_plan(explainer, x, targets, foils, batch_size, outputs.score)
    rows = x if plan is None or plan.is_identity else x[plan.items]
    if len(rows) != len(x):  # several rows per item: more maps to keep
        batch_size = fit(len(rows))
    return x, chosen, plan, rows, batch_size


def memory_need(explainer: Explainer, x: np.ndarray, chosen: list[Layer], seeded: bool,
                outputs: CamOutputs, maps: int, rows: int):
    """memory.explain_need of a call: (everything, one run, the results' bytes)."""
    spatial = explainer.model.spatial_of(x)
    cam_model, footprint = explainer._footprint(tuple(layer.tensor for layer in chosen),
                                                spatial, seeded, outputs)
    side = explainer._side
    item = float(x[:1].nbytes) + (0.0 if side is None else float(sum(
        a[:1].nbytes for a in side.arrays.values())))  # the other inputs fed too
    return explain_need(footprint, cam_model.activation_names,
                        [layer.shape[1] for layer in chosen], item, spatial, maps, rows,
                        explainer.num_classes)


def target_plan(explainer: Explainer, x: np.ndarray, targets, foils, batch_size: int,
              score: str = "logits") -> TargetPlan | None:
    """plan_targets for the checked input `x`, with the forward runs it needs."""
    model, side = explainer.model, explainer._side
    spatial = model.spatial_of(x)
    probe = explainer._probe(spatial, batch_size)
    once = OnceCache()  # forward runs the targets need, each once: logits (None), tensors

    def predict() -> np.ndarray:
        return once.get(None, lambda: probe.bound(side).logits(x))

    shape = model.score_shape_of(spatial)

    def values() -> np.ndarray:  # the explained score's values (under a Sigmoid head)
        z = predict().reshape(len(x), *shape).astype(np.float64)
        if score == "logits":
            return z
        return -np.logaddexp(0, -z) if score == "log_probs" else 1 / (1 + np.exp(-z))

    dense = DenseOutput(shape, len(x), explainer.class_names, model.channels_last, values,
                        lambda name: once.get(name, lambda: probe.bound(side)
                                              .tensor(name, x)),
                        model.nms_boxes)
    return plan_targets(targets, foils, len(x), explainer.num_classes, explainer.class_names,
                        predict, dense)


def run(explainer: Explainer, rows: np.ndarray, plan: TargetPlan | None, chosen: list[Layer],
        outputs: CamOutputs, batch_size: int, consume):
    """Run the rewritten model batch by batch; hand each batch's arrays to `consume`.
    Returns the logits and, with a tie tolerance, each row's near-tie count."""
    model = explainer.model
    seeded = plan is not None
    cam_model, session = explainer._session(tuple(layer.tensor for layer in chosen),
                                            model.spatial_of(rows), seeded, outputs)
    n = len(rows)
    k = int(np.prod(model.score_shape_of(model.spatial_of(rows)), dtype=np.int64))
    logits = np.empty((n, k), np.float32)
    near_ties = None if cam_model.near_ties_name is None else np.empty(n, np.float32)
    names = [cam_model.score_name, *cam_model.activation_names, *cam_model.gradient_names,
             *cam_model.hvp_names]
    if near_ties is not None:
        names.append(cam_model.near_ties_name)
    m = len(chosen)
    items = np.arange(n) if plan is None else plan.items
    for start in range(0, n, batch_size):
        xb = np.ascontiguousarray(rows[start:start + batch_size])
        feeds = {cam_model.input_name: xb}
        feeds.update(side_feeds(model, side_of(explainer._side, items[start:start + len(xb)]),
                                len(xb)))
        if seeded:
            feeds[cam_model.seed_name] = seed_rows(plan, start, len(xb), k)
        results = run_session(session, names, feeds)
        logits[start:start + len(xb)] = results[0]
        if near_ties is not None:
            near_ties[start:start + len(xb)] = results.pop()
        seeds = feeds[cam_model.seed_name] if seeded else one_hot(results[0])
        grads = results[1 + m:1 + 2 * m] if outputs.gradients else [None] * m
        hvps = results[1 + 2 * m:] if outputs.second_order else [None] * m
        consume(start, xb, seeds, results[1:1 + m], grads, hvps)
    return logits, near_ties


def layer_values(explainer: Explainer, layer: Layer, x: np.ndarray, seeds: np.ndarray,
                 score: str, side: SideInputs | None, batch: int | None = None):
    """(activations, d score / d activations) at `layer` for inputs `x` (model layout,
    channels first) seeded with `seeds`, `batch` rows per run (default: all at once)."""
    acts, grads = seeded_values(explainer, (layer.tensor,), CamOutputs(score), x, seeds, side,
                                batch)
    return acts[0], grads[0]


def seeded_values(explainer: Explainer, tensors: tuple[str, ...], outputs: CamOutputs,
                  x: np.ndarray, seeds: np.ndarray, side: SideInputs | None,
                  batch: int | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The activations of `tensors` and (when `outputs` asks for them) their gradients, lists
    over the tensors, for inputs `x` seeded with `seeds`, `batch` rows per run of the cached
    seeded session (default: all at once)."""
    model = explainer.model
    cam_model, session = explainer._session(tensors, model.spatial_of(x), True, outputs)
    names = [*cam_model.activation_names, *cam_model.gradient_names]
    batch = batch or len(x)
    parts = [run_session(session, names, {
        cam_model.input_name: np.ascontiguousarray(x[s:s + batch]),
        cam_model.seed_name: seeds[s:s + batch],
        **side_feeds(model, side, len(x), s, min(len(x), s + batch))})
        for s in range(0, len(x), batch)]
    arrays = [np.concatenate(p) for p in zip(*parts)]
    return arrays[:len(tensors)], arrays[len(tensors):]
