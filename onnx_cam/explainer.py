"""Explainer: targets, batching and orchestration from an input array to an Explanation."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import onnx

from . import kernels
from .errors import (
    InputError,
    LayerError,
    ModelLoadError,
    TargetError,
    UnsupportedModelError,
)
from .explanation import Explanation
from .graph.cam_model import SCORES, CamModel, build_cam_model
from .methods import LayerBatch, get_method
from .model import Layer, Model
from .probes import Probe
from .runtime import RuntimeOptions, make_session
from .targets import TargetPlan, plan_targets


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
    """

    def __init__(self, model, *, example_input=None, class_names: Sequence[str] | None = None,
                 output: str | None = None, runtime: RuntimeOptions | None = None,
                 channels_last: bool | None = None):
        self.model = Model(_as_model_source(model, example_input, class_names), output=output,
                           channels_last=channels_last)
        self.runtime = runtime or RuntimeOptions()
        names = class_names if class_names is not None else self.model.class_names
        self.class_names = list(names) if names is not None else None
        self._sessions: dict[tuple, tuple] = {}
        self._probes: dict[tuple, Probe] = {}
        if not self.model.layers:
            raise UnsupportedModelError(
                "The model has no layer a CAM can be computed on: no tensor with channel and "
                "spatial axes below a convolution lies on the path to the score."
            )
        if self.class_names is not None and len(self.class_names) != self.num_classes:
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
                eigen_smooth: bool = False) -> Explanation:
        """CAMs of `x` for each method and layer; see Explanation for what it holds.

        targets: None (each item's predicted class), "all", "top<k>", a class index or name
        for every item, or one entry per item (an entry may list several classes). foils: the
        class(es) each target is contrasted with. Every (item, target, foil) is one row of the
        result; `res.items` maps rows back to input items.
        score: "logits" (default: the exact logits before a final softmax / sigmoid),
        "log_probs" or "probs".
        eigen_smooth: replace each method's channel sum by the first principal component of
        its weighted activations (pytorch-grad-cam's eigen_smooth).
        """
        x, chosen, plan, rows = self._prepare(x, layers, targets, foils, batch_size)
        method_objs = [get_method(m) for m in ([methods] if isinstance(methods, str) else methods)]
        method_names = [m.name for m in method_objs]
        n, spatial = len(rows), x.shape[2:]
        keys = [(m, layer.name) for m in method_names for layer in chosen]
        cams = {k: np.empty((n, *spatial), np.float32) for k in keys}
        ranges = {k: np.empty((n, 2), np.float32) for k in keys}
        raws: dict[tuple[str, str], np.ndarray] = {}
        probe = self._probe(spatial, batch_size)

        def consume(start, xb, seeds, acts, grads):
            for layer, a, g in zip(chosen, acts, grads):
                batch = LayerBatch(a, g, xb, seeds, layer.tensor, probe)
                for method in method_objs:
                    key = (method.name, layer.name)
                    raw = method.raw(batch, eigen_smooth)
                    if key not in raws:
                        raws[key] = np.empty((n, *raw.shape[1:]), np.float32)
                    raws[key][start:start + len(raw)] = raw
                    cam, rng = kernels.resize_normalize(raw, spatial)
                    cams[key][start:start + len(raw)] = cam
                    ranges[key][start:start + len(raw)] = rng

        gradients = any(m.uses_gradients for m in method_objs)
        logits = self._run(rows, plan, chosen, score, batch_size, consume, gradients)
        predicted = logits.argmax(1)
        aliases = {alias: layer.name for layer in chosen for alias in layer.aliases}
        return Explanation(
            logits, self._probs(logits), predicted,
            predicted if plan is None else plan.targets, None if plan is None else plan.foils,
            method_names, [layer.name for layer in chosen], cams, raws, ranges, self.head,
            self.class_names, aliases, np.arange(n) if plan is None else plan.items, score)

    def activations_and_gradients(self, x, targets=None, layers="auto", foils=None, *,
                                  score: str = "logits", batch_size: int = 64):
        """Logits and, per layer name, (activations, d score / d activations), one row per
        (item, target, foil) as in explain(). Both are (rows, C, *layer_spatial), channels
        first, whatever the layout of the model (a Keras layer's (N, *spatial, C) included)."""
        _, chosen, plan, rows = self._prepare(x, layers, targets, foils, batch_size)
        parts: dict[str, tuple[list, list]] = {layer.name: ([], []) for layer in chosen}

        def consume(start, xb, seeds, acts, grads):
            for layer, a, g in zip(chosen, acts, grads):
                parts[layer.name][0].append(a)
                parts[layer.name][1].append(g)

        logits = self._run(rows, plan, chosen, score, batch_size, consume)
        return logits, {name: (np.concatenate(a), np.concatenate(g))
                        for name, (a, g) in parts.items()}

    # ---- internals ----------------------------------------------------------------------
    def _prepare(self, x, layers, targets, foils, batch_size: int):
        """The checked input, the chosen layers, the target plan and the rows to run."""
        x = self._check_input(x)
        chosen = self._resolve_layers(layers)
        plan = self._plan(x, targets, foils, batch_size)
        rows = x if plan is None or plan.is_identity else x[plan.items]
        return x, chosen, plan, rows

    def _plan(self, x: np.ndarray, targets, foils, batch_size: int) -> TargetPlan | None:
        def predict() -> np.ndarray:
            probe = self._probe(x.shape[2:], batch_size)
            return probe.logits(x)
        return plan_targets(targets, foils, len(x), self.num_classes, self.class_names, predict)

    def _run(self, rows: np.ndarray, plan: TargetPlan | None, chosen: list[Layer], score: str,
             batch_size: int, consume, gradients: bool = True) -> np.ndarray:
        """Run the rewritten model batch by batch; hand each batch's arrays to `consume`."""
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}.")
        if score not in SCORES:
            raise TargetError(f"score={score!r} is not one of {SCORES}.")
        seeded = plan is not None
        cam_model, session = self._session(tuple(layer.tensor for layer in chosen),
                                           tuple(rows.shape[2:]), seeded, score, gradients)
        n, k = len(rows), self.num_classes
        logits = np.empty((n, k), np.float32)
        outputs = [cam_model.score_name, *cam_model.activation_names, *cam_model.gradient_names]
        m = len(chosen)
        for start in range(0, n, batch_size):
            xb = np.ascontiguousarray(rows[start:start + batch_size])
            feeds = {cam_model.input_name: xb}
            if seeded:
                feeds[cam_model.seed_name] = _seed(plan, start, len(xb), k)
            results = session.run(outputs, feeds)
            logits[start:start + len(xb)] = results[0]
            seeds = feeds[cam_model.seed_name] if seeded else _one_hot(results[0])
            grads = results[1 + m:] if gradients else [None] * m
            consume(start, xb, seeds, results[1:1 + m], grads)
        return logits

    def _probe(self, spatial: tuple[int, ...], batch_size: int) -> Probe:
        if spatial not in self._probes:
            self._probes[spatial] = Probe(self.model, self.runtime, spatial, batch_size)
        probe = self._probes[spatial]
        probe.batch_size = batch_size
        return probe

    def _session(self, tensors: tuple[str, ...], spatial: tuple[int, ...], seeded: bool,
                 score: str, gradients: bool):
        key = (tensors, spatial, seeded, score, gradients)
        if key not in self._sessions:
            cam_model: CamModel = build_cam_model(self.model, list(tensors), spatial,
                                                  "input" if seeded else "prediction", score,
                                                  gradients)
            self._sessions[key] = (cam_model, make_session(cam_model.proto, self.runtime))
        return self._sessions[key]

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

    def _check_input(self, x) -> np.ndarray:
        """The input checked against the model's, as (N, C, *spatial) (see Model.graph)."""
        try:
            x = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InputError(f"The input cannot be read as a float32 array ({exc}).") from None
        expected, channel_axis = self.model.input_shape, self.model.channel_axis
        layouts = ({3: "(N, T, C)", 4: "(N, H, W, C)", 5: "(N, D, H, W, C)"}
                   if self.model.channels_last else
                   {3: "(N, C, T)", 4: "(N, C, H, W)", 5: "(N, C, D, H, W)"})
        if x.ndim != len(expected):
            hint = " Add a batch axis: x[None]." if x.ndim == len(expected) - 1 else ""
            raise InputError(f"The model takes {layouts[len(expected)]} inputs of rank "
                             f"{len(expected)}; got shape {x.shape}.{hint}")
        if len(x) == 0:
            raise InputError("The input holds no items (batch axis of size 0).")
        for axis, (want, got) in enumerate(zip(expected[1:], x.shape[1:]), start=1):
            if want is not None and want != got:
                what = "channels" if axis == channel_axis else f"size along axis {axis}"
                raise InputError(f"The model takes {want} {what}; the input has {got} "
                                 f"(input shape {x.shape}, model input {expected})."
                                 f"{self._layout_hint(x.shape)}")
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if bad.any():
            raise InputError(f"Items {np.flatnonzero(bad).tolist()[:20]} contain NaN or Inf; "
                             "clean or drop them before explaining.")
        if channel_axis != 1:
            x = np.ascontiguousarray(np.moveaxis(x, channel_axis, 1))
        return x

    def _layout_hint(self, shape: tuple) -> str:
        """A hint when the input would fit with its channel axis moved to the other end."""
        if self.model.channels_last:
            moved, wanted, fix = (shape[0], *shape[2:], shape[1]), "channels-last", "1, -1"
        else:
            moved, wanted, fix = (shape[0], shape[-1], *shape[1:-1]), "channels-first", "-1, 1"
        if all(w is None or w == g for w, g in zip(self.model.input_shape[1:], moved[1:])):
            return (f" The input looks like the other layout; the model takes {wanted} "
                    f"inputs: pass np.moveaxis(x, {fix}).")
        return ""

    def _probs(self, logits: np.ndarray) -> np.ndarray:
        if self.head == "Sigmoid":
            return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)


def _seed(plan: TargetPlan, start: int, count: int, classes: int) -> np.ndarray:
    """One row per map: +1 on the target class, -1 on the foil (contrastive) if any."""
    seed = np.zeros((count, classes), np.float32)
    rows = np.arange(count)
    seed[rows, plan.targets[start:start + count]] += 1.0
    if plan.foils is not None:
        seed[rows, plan.foils[start:start + count]] -= 1.0
    return seed


def _one_hot(logits: np.ndarray) -> np.ndarray:
    """The seed the graph used when explaining the predicted class."""
    seed = np.zeros_like(logits)
    seed[np.arange(len(logits)), logits.argmax(1)] = 1.0
    return seed
