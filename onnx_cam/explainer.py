"""Explainer: the public face, from an input array to an Explanation.

It holds the model and the sessions built for it (each once, shared by threads); the work of
a call lives beside it: onnx_cam.routing (which input a call on a model with several inputs
covers), onnx_cam.cam_runs (the call's rows, batch size and runs of the rewritten model,
sized by onnx_cam.memory) and onnx_cam.explain_call (explain's maps and Explanation).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import onnx

from . import cam_runs, explain_call
from .concepts import Concepts, factorize
from .concurrency import OnceCache
from .dense import check_dense
from .errors import (
    InputError,
    LayerError,
    ModelLoadError,
    TargetError,
    UnsupportedModelError,
)
from .explanation import Explanation
from .graph.cam_model import CamModel, CamOutputs, build_cam_model
from .input_checks import check_input
from .memory import Footprint, memory_budget, run_footprint
from .methods import get_method
from .model import Layer, Model
from .probes import Probe
from .routing import explained_input
from .runtime import RuntimeOptions, make_session
from .side_inputs import SideInputs, split_inputs


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
        return explain_call.explain(self, x, targets, layers, methods, foils, score=score,
                                    batch_size=batch_size, eigen_smooth=eigen_smooth,
                                    progress=progress, nonfinite=nonfinite, pad_id=pad_id,
                                    mask=mask, check_ties=check_ties, aug_smooth=aug_smooth)

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
