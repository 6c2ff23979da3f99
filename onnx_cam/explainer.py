"""Explainer: targets, batching and orchestration from an input array to an Explanation."""

from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import onnx

from . import cam_runs, kernels, numerics
from .attribution import attribute_inputs
from .concepts import Concepts, factorize
from .concurrency import OnceCache, kernel_guard
from .dense import check_dense
from .errors import (
    InputError,
    LayerError,
    MethodError,
    ModelLoadError,
    TargetError,
    UnsupportedModelError,
)
from .explanation import INPUT, Explanation
from .graph.cam_model import CamModel, CamOutputs, build_cam_model
from .input_checks import check_input, pad_sequences, valid_positions
from .memory import Footprint, memory_budget, run_footprint
from .methods import CamMethod, LayerBatch, get_method
from .model import Layer, Model
from .probes import Probe
from .routing import explained_input
from .runtime import RuntimeOptions, make_session
from .side_inputs import SideInputs, split_inputs
from .targets import Finer, TargetPlan, one_hot, seed_rows


def _as_model_source(model, example_input, class_names):
    """Accept a path / bytes / ModelProto, or convert a framework model on the way."""
    torch = sys.modules.get("torch")  # a torch module can only exist if torch is imported
    if torch is not None and isinstance(model, torch.nn.Module):
        if example_input is None:
            raise InputError("A torch model needs example_input= (a batch the model accepts) "
                             "to be exported to ONNX.")
        from .converters import export_torch
        try:
            return export_torch(model, example_input, class_names=class_names)
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"Exporting the torch model to ONNX failed: {exc}") from None
    from .converters.keras_export import is_keras_model  # imports neither keras nor TF
    if is_keras_model(model):
        from .converters import export_keras
        try:
            return export_keras(model, class_names=class_names, example_input=example_input)
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"Converting the Keras model to ONNX failed: {exc}") from None
    return model


class Explainer:
    """Explains one ONNX model (or a torch module or Keras model, converted on the way).

    >>> exp = Explainer("model.onnx")
    >>> res = exp.explain(x, targets=None, layers="auto", methods=["gradcam", "hirescam"])

    channels_last: the model takes (N, *spatial, C) inputs (Keras). None: as the model's
    metadata says (models converted by onnx_cam.converters); without it, channels-last when
    the first convolution reads the input's last axis as its channels.
    max_memory: the memory one explain call may use (bytes, or "8GB"); None: the
    ONNX_CAM_MAX_MEMORY environment variable, else 75% of the machine's memory. Batches
    shrink to fit it; work that cannot fit even one item per run is refused up front.
    grid, prefix_tokens: for a transformer whose patch grid onnx-cam does not find in the
    graph (onnx_cam.grids): every (N, prefix_tokens + prod(grid), C) tensor below the patch
    embedding is offered as a layer, its tokens after the first prefix_tokens read as the
    grid (row-major, one size per spatial axis of the input).

    One Explainer may serve several threads at once: each cached session and graph is built
    once, and results equal those of sequential calls.

    input: for a model with several inputs, the one whose spatial axes the maps cover by
    default (see explain's input=); None: the only (N, C, *spatial) input (or token ids)
    computed into a convolution.
    """

    _side: SideInputs | None = None  # an explain call's inputs fed as given (see _route)

    def __init__(self, model, *, example_input=None, class_names: Sequence[str] | None = None,
                 output: str | None = None, runtime: RuntimeOptions | None = None,
                 channels_last: bool | None = None, max_memory: int | str | None = None,
                 input: str | None = None, grid: Sequence[int] | None = None,
                 prefix_tokens: int | None = None):
        memory_budget(max_memory)  # a malformed size fails here, not at the first explain
        self.max_memory = max_memory
        self.model = Model(_as_model_source(model, example_input, class_names), output=output,
                           channels_last=channels_last, max_memory=max_memory, input=input,
                           grid=grid, prefix_tokens=prefix_tokens)
        self._channels_last, self._grid = channels_last, (grid, prefix_tokens)
        self._other_inputs: OnceCache[Explainer] = OnceCache()
        self.runtime = runtime or RuntimeOptions()
        names = class_names if class_names is not None else self.model.class_names
        self.class_names = list(names) if names is not None else None
        self._sessions: OnceCache[tuple] = OnceCache()
        self._footprints: OnceCache = OnceCache()
        self._probe_sessions: OnceCache[OnceCache] = OnceCache()
        self._input_sessions: OnceCache = OnceCache()  # onnx_cam.attribution's
        if not self.model.layers:
            raise UnsupportedModelError(
                "The model has no layer a CAM can be computed on: no tensor with channel and "
                "spatial axes below a convolution lies on the path to the score."
            )
        if (self.class_names is not None and not self.model.dense
                and len(self.class_names) != self.num_classes):
            raise TargetError(f"class_names has {len(self.class_names)} names but the model "
                              f"scores {self.num_classes} classes.")

    # ---- what the model offers --------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        """Candidate target layers, deepest first."""
        return [layer.name for layer in self.model.layers]

    @property
    def layer_info(self) -> list[Layer]:
        """Candidate layers with their ONNX tensor, producing op, shape and every alias."""
        return list(self.model.layers)

    @property
    def head(self) -> str | None:
        """The final Softmax / LogSoftmax / Sigmoid whose input is explained, if any."""
        return self.model.head

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def inputs(self) -> list[str]:
        """The model's input names, in the graph's order."""
        return list(self.model.input_names)

    def for_input(self, name: str) -> Explainer:
        """The Explainer whose maps cover input `name` of a model with several inputs (its
        `layers`: the candidate layers computed from that input); sessions of its own."""
        if name == self.model.input_name:
            return self
        if name not in self.model.input_names:
            raise InputError(f"input={name!r} is not an input of the model; its inputs are "
                             f"{list(self.model.input_names)}.")
        return self._other_inputs.get(name, lambda: Explainer(
            self.model.proto, class_names=self.class_names, output=self.model.output_name,
            runtime=self.runtime, channels_last=self._channels_last,
            max_memory=self.max_memory, input=name, grid=self._grid[0],
            prefix_tokens=self._grid[1]))

    def check_input(self, x, nonfinite: str = "raise") -> np.ndarray:
        """`x` checked against the model's input (shape, layout, dtype, NaN / Inf unless
        nonfinite="flag"), as (N, C, *spatial); an InputError naming the fix otherwise."""
        return check_input(self.model, x, nonfinite)

    def save_model(self, path) -> None:
        """Write the ONNX model being explained (e.g. the one exported from torch)."""
        onnx.save(self.model.proto, path)

    def __repr__(self) -> str:
        more = ", ..." if len(self.layers) > 4 else ""
        return (f"Explainer(input={self.model.input_name} {self.model.input_shape}, "
                f"head={self.head}, layers={self.layers[:4]}{more}, auto={self.layers[0]!r})")

    # ---- explaining ---------------------------------------------------------------------
    def explain(self, x, targets=None, layers="auto", methods="gradcam", foils=None, *,
                score: str = "logits", batch_size: int = 64,
                eigen_smooth: bool = False, progress=None,
                nonfinite: str = "raise", pad_id: int | None = None,
                mask=None, check_ties: bool | float = False,
                aug_smooth: bool = False, input: str | None = None) -> Explanation:
        """CAMs of `x` for each method and layer; see Explanation for what it holds.

        targets: None (each item's predicted class), "all", "top<k>", a class index or name
        for every item, or one entry per item (an entry may list several classes). foils: the
        class(es) each target is contrasted with. Every (item, target, foil) is one row of the
        result; `res.items` maps rows back to input items.
        score: "logits" (default: the exact logits before a final softmax / sigmoid),
        "log_probs" or "probs".
        methods: names or configured instances (IntegratedGradients(n_steps=32)); input-level
        methods (saliency, integrated_gradients, ...) ignore layers= (guided_gradcam uses
        its one layer) and keep their maps under layer "input" (onnx_cam.attribution).
        eigen_smooth: replace each method's channel sum by the first principal component of
        its weighted activations (pytorch-grad-cam's eigen_smooth).
        progress: called as progress(done, total) after each batch; both count rows (items,
        unless several targets or foils per item).
        batch_size: rows per ONNX Runtime run at most; fewer when the memory budget
        (max_memory) needs it, with the same results.
        nonfinite: input items holding NaN or Inf raise an InputError naming them ("raise"),
        or are explained with NaN maps and RowFlag.INPUT_NONFINITE in `res.flags` ("flag").
        NaN / Inf inside the model and all-zero gradients are always flagged per row
        (`res.flags`, `res.flag_reasons(row)`) with a NumericsWarning / ZeroGradientWarning.
        pad_id: for a model taking (N, T) token ids, the padding id: `x` may then be a list of
        sequences of different lengths (padded with it to one length), and padding positions
        are left out of the maps (0, and outside each map's min-max).
        mask: (N, *input_spatial) bool, True where the input is real: positions outside it
        are left out of the maps the same way (any modality; e.g. padded signals).
        check_ties: flag rows (RowFlag.NEAR_TIE) where a comparison that routes the gradient
        between the layers and the score (a ReLU / LeakyReLU / PReLU / Clip input, a MaxPool /
        GlobalMaxPool / ReduceMax / ReduceMin winner) is within float32 rounding of a tie:
        there another correct forward (torch's) may route the gradient elsewhere. True: within
        1e-5 of the tensor's largest magnitude (per row); a float: that relative tolerance.
        aug_smooth: for images, each cam is the mean of the cams of the input flipped left to
        right or not and scaled by 0.9, 1 or 1.1, each mapped back (pytorch-grad-cam's
        aug_smooth, but explaining the targets of the input as given); raw maps and score
        ranges stay those of the input as given.
        input: for a model with several inputs (x a dict {name: array}, or a tuple in the
        graph's input order), the input whose spatial axes the maps cover; None: the one the
        layers are computed from. Every other input is fed as given, per item.
        """
        x, routed = self._route(x, input, layers)
        if routed is not self:
            return routed.explain(x, targets, layers, methods, foils, score=score,
                                  batch_size=batch_size, eigen_smooth=eigen_smooth,
                                  progress=progress, nonfinite=nonfinite, pad_id=pad_id,
                                  mask=mask, check_ties=check_ties, aug_smooth=aug_smooth)
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
        if self._side is not None and (meta or aug_smooth):
            raise MethodError("sess and aug_smooth resize or flip the explained input, which "
                              "the other inputs of this model (fed as given) would not follow; "
                              "they take models with one input.")
        if meta and (isinstance(targets, Finer) or aug_smooth or mask is not None
                     or self.model.tokens):
            raise MethodError("sess explains patches of rescaled inputs: it takes float "
                              "inputs, without Finer targets, aug_smooth or mask=.")
        if isinstance(targets, Finer) and (score != "logits" or not all(
                m.uses_gradients for m in every)):
            raise MethodError("Finer targets are a function of the logits that only gradient "
                              "methods differentiate exactly: use score='logits' and gradient "
                              f"methods (not {[m.name for m in every]}, score={score!r}).")
        check_dense(self.model, targets, score, every, aug_smooth)
        if self.model.tokens and any(m.scales_input for m in every):
            raise MethodError(f"{[m.name for m in every if m.scales_input]} multiply the "
                              "input by masks, which token ids cannot be; use a gradient "
                              "method or ablationcam.")
        x = pad_sequences(self.model, x, pad_id)
        outputs = CamOutputs(score, gradients, _tie_tolerance(check_ties, gradients),
                             any(m.uses_hvp for m in method_objs))
        if aug_smooth and (self.model.spatial_rank != 2 or self.model.tokens or mask is not None
                           or outputs.second_order):
            raise MethodError("aug_smooth flips images left to right: it takes image models "
                              "(2 spatial axes), without mask= and without shapleycam.")
        x, chosen, plan, rows, batch_size = cam_runs.prepare(self,
            x, layers, targets, foils, batch_size, outputs, len(every), nonfinite,
            cams=bool(method_objs))
        n, spatial = len(rows), self.model.spatial_of(x)
        row_items = np.arange(n) if plan is None else plan.items
        valid = valid_positions(self.model, x, spatial, pad_id, mask)
        if valid is not None and plan is not None and not plan.is_identity:
            valid = valid[plan.items]
        keys = [(m, layer.name) for m in method_names for layer in chosen]
        cams = {k: np.empty((n, *spatial), np.float32) for k in keys}
        ranges = {k: np.empty((n, 2), np.float32) for k in keys}
        raws: dict[tuple[str, str], np.ndarray] = {}
        flags = numerics.flag_where(numerics.nonfinite_rows(rows),
                                    numerics.RowFlag.INPUT_NONFINITE)
        zero_gradient_layers: list[str] = []
        probe = self._probe(spatial, batch_size)

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
                batch = LayerBatch(a, g, xb, seeds, layer.tensor, probe.bound(self._side_of(items)),
                                   h, self._rerun(layer, seeds, outputs.score, items))
                for method in method_objs:
                    key = (method.name, layer.name)
                    with kernel_guard():
                        raw = self._raw(method, batch, eigen_smooth, items)
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
            logits, near_ties = cam_runs.run(self, rows, plan, chosen, outputs, batch_size,
                                             consume)
        else:
            logits, near_ties = probe.bound(self._side_of(row_items)).logits(rows), None
        flags |= numerics.flag_where(numerics.nonfinite_rows(logits),
                                     numerics.RowFlag.SCORE_NONFINITE)
        if near_ties is not None:
            flags |= numerics.flag_where(near_ties > 0, numerics.RowFlag.NEAR_TIE)
        for method in meta:
            for layer in chosen:
                key = (method.name, layer.name)
                raws[key] = self._sess(method, layer, rows, plan, logits, score, batch_size)
                cams[key], ranges[key] = kernels.resize_normalize(raws[key], spatial)
        inputs = None
        if input_methods:
            seeds = one_hot(logits) if plan is None else seed_rows(plan, 0, n, self.num_classes)
            offset = n if method_objs else 0
            inputs = attribute_inputs(
                self, rows, seeds, np.arange(n) if plan is None else plan.items, input_methods,
                flags, score=score, batch_size=batch_size, layers=chosen,
                progress=None if progress is None else
                lambda done, total: progress(offset + done, offset + total))
            for name, cam in inputs.cams.items():
                rng = inputs.ranges[name]
                if valid is not None:
                    cam, rng = _normalize_within(cam, rng, valid)
                key = (name, INPUT)
                cams[key], ranges[key], raws[key] = cam, rng, inputs.raws[name]
        numerics.warn_flagged(flags, zero_gradient_layers)
        predicted = logits.argmax(1)
        if self.model.dense:  # the output as the model shapes it, classes per position / box
            predicted = np.full(n, -1) if plan is None else plan.predicted(logits)
            logits = logits.reshape(n, *self.model.score_shape_of(spatial))
        aliases = {alias: layer.name for layer in chosen for alias in layer.aliases}
        return Explanation(
            logits, self._probs(logits), predicted,
            predicted if plan is None else plan.targets, None if plan is None else plan.foils,
            [m.name for m in every], [layer.name for layer in chosen] if method_names else [],
            cams, raws, ranges, self.head, self.class_names, aliases,
            np.arange(n) if plan is None else plan.items, score, flags,
            inputs.attributions if inputs else {}, inputs.infos if inputs else {})

    def activations_and_gradients(self, x, targets=None, layers="auto", foils=None, *,
                                  score: str = "logits", batch_size: int = 64,
                                  input: str | None = None):
        """Logits and, per layer name, (activations, d score / d activations), one row per
        (item, target, foil) as in explain(). Both are (rows, C, *layer_spatial), channels
        first, whatever the layout of the model (a Keras layer's (N, *spatial, C) included).
        input: as for explain()."""
        x, routed = self._route(x, input, layers)
        if routed is not self:
            return routed.activations_and_gradients(x, targets, layers, foils, score=score,
                                                    batch_size=batch_size)
        outputs = CamOutputs(score)
        check_dense(self.model, targets, score, [get_method("gradcam")])  # as a gradient method
        _, chosen, plan, rows, batch_size = cam_runs.prepare(self, x, layers, targets, foils,
                                                             batch_size, outputs)
        parts: dict[str, tuple[list, list]] = {layer.name: ([], []) for layer in chosen}

        def consume(start, xb, seeds, acts, grads, hvps):
            for layer, a, g in zip(chosen, acts, grads):
                parts[layer.name][0].append(a)
                parts[layer.name][1].append(g)

        logits, _ = cam_runs.run(self, rows, plan, chosen, outputs, batch_size, consume)
        return logits, {name: (np.concatenate(a), np.concatenate(g))
                        for name, (a, g) in parts.items()}

    def activations(self, x, layers="auto", *, batch_size: int = 64,
                    input: str | None = None) -> dict[str, np.ndarray]:
        """Per layer name, the activations (N, C, *layer_spatial), channels first; forward
        only. input: as for explain()."""
        x, routed = self._route(x, input, layers)
        if routed is not self:
            return routed.activations(x, layers, batch_size=batch_size)
        outputs = CamOutputs(gradients=False)
        _, chosen, _, rows, batch_size = cam_runs.prepare(self, x, layers, None, None,
                                                          batch_size, outputs)
        parts: dict[str, list] = {layer.name: [] for layer in chosen}

        def consume(start, xb, seeds, acts, grads, hvps):
            for layer, a in zip(chosen, acts):
                parts[layer.name].append(a)

        cam_runs.run(self, rows, None, chosen, outputs, batch_size, consume)
        return {name: np.concatenate(a) for name, a in parts.items()}

    def factorize(self, x, layer: str = "auto", components: int = 5, *, scores: bool = True,
                  seed: int = 0, batch_size: int = 64) -> Concepts:
        """Deep Feature Factorization (onnx_cam.concepts): `components` concepts shared by
        the items of `x` at `layer`, where each item shows each of them and, with `scores`,
        the logits the head above the layer gives a layer filled with each concept."""
        if not isinstance(layer, str):
            raise LayerError("factorize() takes one layer name.")
        if len(self.model.input_names) > 1:
            raise InputError("factorize() takes models with one input: its concept scores run "
                             "the head on concepts alone, without the other inputs.")
        spatial = self.model.spatial_of(self.check_input(x))
        (name, acts), = self.activations(x, layer, batch_size=batch_size).items()
        concepts = factorize(acts, components, spatial, seed)
        if scores:
            filled = np.broadcast_to(concepts.vectors.T.reshape(components, -1,
                                                                *[1] * (acts.ndim - 2)),
                                     (components, *acts.shape[1:]))
            probe = self._probe(spatial, batch_size)
            concepts.scores = probe.head_logits(self._resolve_layers(name)[0].tensor,
                                                np.ascontiguousarray(filled, np.float32))
        return concepts

    # ---- internals ----------------------------------------------------------------------
    def _sess(self, method, layer: Layer, rows: np.ndarray, plan: TargetPlan | None,
              logits: np.ndarray, score: str, batch_size: int) -> np.ndarray:
        """SESS's fused maps of `rows` at `layer`: each patch explained by the base method
        for its row's target (and foil), scored by this model."""
        window = method.window or min(rows.shape[2:])
        if any(d is not None and d != window for d in self.model.spatial_input_shape):
            raise MethodError(f"sess runs the model on patches of {window} per axis; this "
                              f"model takes inputs of {self.model.spatial_input_shape} only. "
                              "Export it with dynamic spatial axes.")
        targets = logits.argmax(1) if plan is None else plan.targets
        foils = None if plan is None else plan.foils
        seeds = (one_hot(logits) if plan is None
                 else seed_rows(plan, 0, len(rows), logits.shape[1]))

        def explain(patches: np.ndarray, which: np.ndarray) -> np.ndarray:
            res = self.explain(patches, targets=targets[which].tolist(), layers=layer.name,
                               methods=method.base, score=score, batch_size=batch_size,
                               foils=None if foils is None else foils[which].tolist())
            return res.cam()

        def scores(patches: np.ndarray, which: np.ndarray, softmax: bool) -> np.ndarray:
            values = self._probe(patches.shape[2:], batch_size).logits(patches)
            if softmax:
                values = np.exp(values - values.max(axis=1, keepdims=True))
                values /= values.sum(axis=1, keepdims=True)
            return (values * seeds[which]).sum(axis=1)

        return method.fused(rows, explain, scores)

    def _rerun(self, layer: Layer, seeds: np.ndarray, score: str, items: np.ndarray):
        """LayerBatch.rerun: one layer's activations and gradients for modified inputs of the
        batch's shape (its `items`), explaining `seeds` (one seeded run, on a cached
        session)."""
        def rerun(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return cam_runs.layer_values(self, layer, np.asarray(x, np.float32), seeds,
                                         score, self._side_of(items))
        return rerun

    def _side_of(self, items: np.ndarray) -> SideInputs | None:
        """The inputs fed as given of these items (None: a model with one input)."""
        return None if self._side is None else self._side.take(items)

    def _raw(self, method: CamMethod, batch: LayerBatch, eigen_smooth: bool,
             items: np.ndarray) -> np.ndarray:
        """method.raw; with several model inputs, a method that runs the model on perturbed
        copies of its rows (passes()) sees one row at a time, so each copy is fed its item's
        other inputs."""
        if self._side is None or method.uses_gradients or not hasattr(method, "passes"):
            return method.raw(batch, eigen_smooth)
        return np.concatenate([method.raw(replace(
            batch, activations=batch.activations[i:i + 1], inputs=batch.inputs[i:i + 1],
            seeds=batch.seeds[i:i + 1], probe=batch.probe.bound(self._side_of(items[i:i + 1])),
            gradients=None if batch.gradients is None else batch.gradients[i:i + 1],
            hvp=None if batch.hvp is None else batch.hvp[i:i + 1]), eigen_smooth)
            for i in range(len(items))])

    def _route(self, x, input: str | None, layers):
        """(the explained input, the Explainer to explain it with): for a model with several
        inputs, a copy of the one bound to the input the maps cover, holding this call's other
        inputs (SideInputs); `x` and self for a one-input model or a routed call."""
        if self._side is not None:
            return x, self
        if len(self.model.input_names) == 1:
            return split_inputs(self.model, x)[0], self
        target = self.for_input(self.explained_input(input, layers))
        explained, side = split_inputs(target.model, x)
        routed = copy.copy(target)
        routed._side = side
        return explained, routed

    def explained_input(self, input: str | None = None, layers="auto") -> str:
        """The input the maps cover: input= if given, else the Explainer's, else the only
        spatial input the named layers are computed from."""
        return explained_input(self, input, layers)

    def _probe(self, spatial: tuple[int, ...], batch_size: int) -> Probe:
        """A Probe of its own for each call (its batch size is the call's); its sessions are
        shared by every probe of the same spatial shape."""
        sessions = self._probe_sessions.get(spatial, OnceCache)
        return Probe(self.model, self.runtime, spatial, batch_size, sessions)

    def _session(self, tensors: tuple[str, ...], spatial: tuple[int, ...], seeded: bool,
                 outputs: CamOutputs) -> tuple[CamModel, object]:
        def build():
            cam_model = build_cam_model(self.model, list(tensors), spatial,
                                        "input" if seeded else "prediction", outputs)
            return cam_model, make_session(cam_model.proto, self.runtime)
        return self._sessions.get((tensors, spatial, seeded, outputs), build)

    def _footprint(self, tensors: tuple[str, ...], spatial: tuple[int, ...], seeded: bool,
                   outputs: CamOutputs) -> tuple[CamModel, Footprint]:
        """The rewritten model of _session and its memory footprint, each built once."""
        cam_model, _ = self._session(tensors, spatial, seeded, outputs)
        return cam_model, self._footprints.get((tensors, spatial, seeded, outputs),
                                               lambda: run_footprint(cam_model.proto))

    def _resolve_layers(self, layers) -> list[Layer]:
        """The layers asked for, each named as the caller named it ("auto": the deepest)."""
        if layers is None:
            layers = "auto"
        names = [layers] if isinstance(layers, str) else list(layers)
        if not names:
            raise LayerError("layers= is empty; name at least one layer or use 'auto'.")
        chosen: list[Layer] = []
        for name in names:
            if name == "auto":
                layer = self.model.layers[0]
            else:
                layer = replace(self.model.resolve_layer(name), name=name)
            if all(layer.name != other.name for other in chosen):
                chosen.append(layer)
        return chosen

    def _probs(self, logits: np.ndarray) -> np.ndarray:
        """The model's head applied to the logits; a dense output without a head as it is."""
        axis = self.model.head_axis if self.model.dense else 1
        if self.model.dense and self.head is None:
            return logits.copy()
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite rows are flagged
            if self.head == "Sigmoid":
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
