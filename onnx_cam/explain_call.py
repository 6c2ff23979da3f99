"""One explain call, once routed to the Explainer of the input its maps cover: the methods
checked against the call, each batch's run (onnx_cam.cam_runs) turned into maps per method
and layer (raw, resized and normalised, within the valid positions, aug_smooth's mean), SESS's
fused maps and the input attributions added, and the Explanation assembled.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from . import cam_runs, kernels, numerics
from .attribution import attribute_inputs
from .concurrency import kernel_guard
from .dense import check_dense
from .errors import InputError, MethodError
from .explanation import INPUT, Explanation
from .graph.cam_model import CamOutputs
from .input_checks import pad_sequences, valid_positions
from .methods import CamMethod, LayerBatch, get_method
from .model import Layer, Model
from .side_inputs import SideInputs, side_of
from .targets import Finer, TargetPlan, one_hot, seed_rows

if TYPE_CHECKING:
    from .explainer import Explainer


def explain(explainer: Explainer, x, targets, layers, methods, foils, *, score: str,
            batch_size: int, eigen_smooth: bool, progress, nonfinite: str, pad_id: int | None,
            mask, check_ties: bool | float, aug_smooth: bool) -> Explanation:
    """Explainer.explain (see there) on the Explainer of the input the maps cover."""
    model, side = explainer.model, explainer._side
    single = isinstance(methods, (str, CamMethod))
    every = [get_method(m) for m in ([methods] if single else methods)]
    # input-level methods (attributions) ignore layers= and run in onnx_cam.attribution;
    # meta-methods (SESS) explain patches of the input with a base method afterwards
    input_methods = [m for m in every if m.level == "input"]
    meta = [m for m in every if m.level == "meta"]
    method_objs = [m for m in every if m.level == "layer"]
    method_names = [m.name for m in method_objs + meta]
    gradients = any(m.uses_gradients for m in method_objs)
    stages = (1 if method_objs else 0) + len(input_methods)
    _check_methods(model, side, every, targets, score, mask, aug_smooth)
    x = pad_sequences(model, x, pad_id)
    outputs = CamOutputs(score, gradients, _tie_tolerance(check_ties, gradients),
                         any(m.uses_hvp for m in method_objs))
    if aug_smooth and (model.spatial_rank != 2 or model.tokens or mask is not None
                       or outputs.second_order):
        raise MethodError("aug_smooth flips images left to right: it takes image models "
                          "(2 spatial axes), without mask= and without shapleycam.")
    x, chosen, plan, rows, batch_size = cam_runs.prepare(
        explainer, x, layers, targets, foils, batch_size, outputs, len(every), nonfinite,
        cams=bool(method_objs))
    n, spatial = len(rows), model.spatial_of(x)
    row_items = np.arange(n) if plan is None else plan.items
    valid = valid_positions(model, x, spatial, pad_id, mask)
    if valid is not None and plan is not None and not plan.is_identity:
        valid = valid[plan.items]
    keys = [(m, layer.name) for m in method_names for layer in chosen]
    cams = {k: np.empty((n, *spatial), np.float32) for k in keys}
    ranges = {k: np.empty((n, 2), np.float32) for k in keys}
    raws: dict[tuple[str, str], np.ndarray] = {}
    flags = numerics.flag_where(numerics.nonfinite_rows(rows),
                                numerics.RowFlag.INPUT_NONFINITE)
    zero_gradient_layers: list[str] = []
    probe = explainer._probe(spatial, batch_size)

    def consume(start, xb, seeds, acts, grads, hvps):
        done = slice(start, start + len(xb))
        # each layer's own flags: a gradient that is zero at one layer (a branch the score
        # does not read, as an FPN level) must not blank the maps of the others
        row_flags = flags[done].copy()
        for layer, a, g, h in zip(chosen, acts, grads, hvps):
            layer_flags = numerics.layer_flags(a, g) | row_flags
            if (layer_flags & numerics.RowFlag.ZERO_GRADIENT).any():
                zero_gradient_layers.append(layer.name)
            items = row_items[done]
            batch = LayerBatch(a, g, xb, seeds, layer.tensor, probe.bound(side_of(side, items)),
                               h, _rerun(explainer, layer, seeds, outputs.score, items))
            for method in method_objs:
                key = (method.name, layer.name)
                with kernel_guard():
                    raw = _raw(method, batch, eigen_smooth, side, items)
                    cam, rng = kernels.resize_normalize(raw, spatial)
                    if aug_smooth:
                        cam = _augmented_mean(method, batch, eigen_smooth, spatial)
                if valid is not None:
                    cam, rng = _normalize_within(cam, rng, valid[done])
                layer_flags |= numerics.settle_maps(raw, cam, rng, layer_flags,
                                                    method.uses_gradients)
                if key not in raws:
                    raws[key] = np.empty((n, *raw.shape[1:]), np.float32)
                raws[key][done] = raw
                cams[key][done] = cam
                ranges[key][done] = rng
            flags[done] |= layer_flags
        if progress is not None:
            progress(start + len(xb), n * stages)

    if method_objs:
        logits, near_ties = cam_runs.run(explainer, rows, plan, chosen, outputs, batch_size,
                                         consume)
    else:
        logits, near_ties = probe.bound(side_of(side, row_items)).logits(rows), None
    flags |= numerics.flag_where(numerics.nonfinite_rows(logits),
                                 numerics.RowFlag.SCORE_NONFINITE)
    if near_ties is not None:
        flags |= numerics.flag_where(near_ties > 0, numerics.RowFlag.NEAR_TIE)
    for method in meta:
        for layer in chosen:
            key = (method.name, layer.name)
            raws[key] = _sess(explainer, method, layer, rows, plan, logits, score, batch_size)
            cams[key], ranges[key] = kernels.resize_normalize(raws[key], spatial)
    inputs = None
    if input_methods:
        seeds = one_hot(logits) if plan is None else seed_rows(plan, 0, n, explainer.num_classes)
        offset = n if method_objs else 0
        inputs = attribute_inputs(
            explainer, rows, seeds, np.arange(n) if plan is None else plan.items, input_methods,
            flags, score=score, batch_size=batch_size, layers=chosen,
            progress=None if progress is None else
            lambda done, total: progress(offset + done, offset + total))
        for name, cam in inputs.cams.items():
            rng = inputs.ranges[name]
            if valid is not None:
                cam, rng = _normalize_within(cam, rng, valid)
            key = (name, INPUT)
            cams[key], ranges[key], raws[key] = cam, rng, inputs.raws[name]
    numerics.warn_flagged(flags, zero_gradient_layers, stacklevel=4)  # Explainer.explain's caller
    predicted = logits.argmax(1)
    if model.dense:  # the output as the model shapes it, classes per position / box
        predicted = np.full(n, -1) if plan is None else plan.predicted(logits)
        logits = logits.reshape(n, *model.score_shape_of(spatial))
    aliases = {alias: layer.name for layer in chosen for alias in layer.aliases}
    return Explanation(
        logits, _probabilities(model, logits), predicted,
        predicted if plan is None else plan.targets, None if plan is None else plan.foils,
        [m.name for m in every], [layer.name for layer in chosen] if method_names else [],
        cams, raws, ranges, model.head, explainer.class_names, aliases,
        np.arange(n) if plan is None else plan.items, score, flags,
        inputs.attributions if inputs else {}, inputs.infos if inputs else {})


def _check_methods(model: Model, side: SideInputs | None, every: list[CamMethod], targets,
                   score: str, mask, aug_smooth: bool) -> None:
    """A MethodError for methods the call's model, targets, score or options do not take."""
    meta = [m for m in every if m.level == "meta"]
    if side is not None and (meta or aug_smooth):
        raise MethodError("sess and aug_smooth resize or flip the explained input, which "
                          "the other inputs of this model (fed as given) would not follow; "
                          "they take models with one input.")
    if meta and (isinstance(targets, Finer) or aug_smooth or mask is not None
                 or model.tokens):
        raise MethodError("sess explains patches of rescaled inputs: it takes float "
                          "inputs, without Finer targets, aug_smooth or mask=.")
    if isinstance(targets, Finer) and (score != "logits" or not all(
            m.uses_gradients for m in every)):
        raise MethodError("Finer targets are a function of the logits that only gradient "
                          "methods differentiate exactly: use score='logits' and gradient "
                          f"methods (not {[m.name for m in every]}, score={score!r}).")
    check_dense(model, targets, score, every, aug_smooth)
    if model.tokens and any(m.scales_input for m in every):
        raise MethodError(f"{[m.name for m in every if m.scales_input]} multiply the "
                          "input by masks, which token ids cannot be; use a gradient "
                          "method or ablationcam.")


def _sess(explainer: Explainer, method, layer: Layer, rows: np.ndarray,
          plan: TargetPlan | None, logits: np.ndarray, score: str,
          batch_size: int) -> np.ndarray:
    """SESS's fused maps of `rows` at `layer`: each patch explained by the base method
    for its row's target (and foil), scored by this model."""
    shape = explainer.model.spatial_input_shape
    window = method.window or min(rows.shape[2:])
    if any(d is not None and d != window for d in shape):
        raise MethodError(f"sess runs the model on patches of {window} per axis; this "
                          f"model takes inputs of {shape} only. "
                          "Export it with dynamic spatial axes.")
    targets = logits.argmax(1) if plan is None else plan.targets
    foils = None if plan is None else plan.foils
    seeds = one_hot(logits) if plan is None else seed_rows(plan, 0, len(rows), logits.shape[1])

    def explain(patches: np.ndarray, which: np.ndarray) -> np.ndarray:
        res = explainer.explain(patches, targets=targets[which].tolist(), layers=layer.name,
                                methods=method.base, score=score, batch_size=batch_size,
                                foils=None if foils is None else foils[which].tolist())
        return res.cam()

    def scores(patches: np.ndarray, which: np.ndarray, softmax: bool) -> np.ndarray:
        values = explainer._probe(patches.shape[2:], batch_size).logits(patches)
        if softmax:
            values = np.exp(values - values.max(axis=1, keepdims=True))
            values /= values.sum(axis=1, keepdims=True)
        return (values * seeds[which]).sum(axis=1)

    return method.fused(rows, explain, scores)


def _rerun(explainer: Explainer, layer: Layer, seeds: np.ndarray, score: str,
           items: np.ndarray):
    """LayerBatch.rerun: one layer's activations and gradients for modified inputs of the
    batch's shape (its `items`), explaining `seeds` (one seeded run, on a cached
    session)."""
    def rerun(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return cam_runs.layer_values(explainer, layer, np.asarray(x, np.float32), seeds,
                                     score, side_of(explainer._side, items))
    return rerun


def _raw(method: CamMethod, batch: LayerBatch, eigen_smooth: bool, side: SideInputs | None,
         items: np.ndarray) -> np.ndarray:
    """method.raw; with several model inputs (`side`: the other inputs), a method that runs
    the model on perturbed copies of its rows (passes()) sees one row at a time, so each copy
    is fed its item's other inputs."""
    if side is None or method.uses_gradients or not hasattr(method, "passes"):
        return method.raw(batch, eigen_smooth)
    return np.concatenate([method.raw(replace(
        batch, activations=batch.activations[i:i + 1], inputs=batch.inputs[i:i + 1],
        seeds=batch.seeds[i:i + 1], probe=batch.probe.bound(side_of(side, items[i:i + 1])),
        gradients=None if batch.gradients is None else batch.gradients[i:i + 1],
        hvp=None if batch.hvp is None else batch.hvp[i:i + 1]), eigen_smooth)
        for i in range(len(items))])


def _probabilities(model: Model, logits: np.ndarray) -> np.ndarray:
    """The model's head applied to the logits; a dense output without a head as it is."""
    axis = model.head_axis if model.dense else 1
    if model.dense and model.head is None:
        return logits.copy()
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite rows are flagged
        if model.head == "Sigmoid":
            return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
        return (shifted / shifted.sum(axis=axis, keepdims=True)).astype(np.float32)


def _normalize_within(cam: np.ndarray, rng: np.ndarray, valid: np.ndarray):
    """Maps scaled to [0, 1] over their valid positions only, 0 elsewhere; the score range
    becomes that of the valid positions."""
    per_row = (-1, *[1] * (cam.ndim - 1))
    values = cam * (rng[:, 1] - rng[:, 0]).reshape(per_row) + rng[:, 0].reshape(per_row)
    inside = np.where(valid, values, np.nan).reshape(len(cam), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows with no valid position
        lo, hi = np.nan_to_num(np.nanmin(inside, axis=1)), np.nan_to_num(np.nanmax(inside, axis=1))
    span = (hi - lo).reshape(per_row)
    scaled = np.where(span > 0, (values - lo.reshape(per_row)) / np.where(span > 0, span, 1), 0)
    return (np.where(valid, scaled, 0).astype(np.float32),
            np.stack([lo, hi], axis=1).astype(np.float32))


# pytorch-grad-cam's aug_smooth (ttach): a left-right flip or not, times a scale
AUGMENTATIONS = [(flip, scale) for flip in (False, True) for scale in (0.9, 1.0, 1.1)]


def _augmented_mean(method, batch: LayerBatch, eigen_smooth: bool, spatial) -> np.ndarray:
    """The mean over AUGMENTATIONS of the method's cams of the augmented inputs, flipped
    back: each a seeded run of the layer on the augmented batch."""
    total = np.zeros((len(batch.inputs), *spatial), np.float32)
    for flip, scale in AUGMENTATIONS:
        x = np.float32(scale) * (batch.inputs[..., ::-1] if flip else batch.inputs)
        acts, grads = batch.rerun(np.ascontiguousarray(x))
        augmented = replace(batch, activations=acts, gradients=grads, inputs=x)
        cam, _ = kernels.resize_normalize(method.raw(augmented, eigen_smooth), spatial)
        total += cam[..., ::-1] if flip else cam
    return total / len(AUGMENTATIONS)


def _tie_tolerance(check_ties: bool | float, gradients: bool) -> float | None:
    """The relative tolerance explain(check_ties=...) asks for; None when not checking."""
    if check_ties is False or not gradients:
        return None
    tolerance = 1e-5 if check_ties is True else float(check_ties)
    if not 0 < tolerance < 1:
        raise InputError(f"check_ties must be True, False or a relative tolerance in (0, 1); "
                         f"got {check_ties!r}.")
    return tolerance
