"""The result of Explainer.explain: maps per (method, layer), scores and targets; save / load."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from .errors import LayerError, MethodError, OnnxCamError
from .files import write_atomic
from .methods import get_method
from .numerics import describe_flags

_SEP = "::"
#: the pseudo-layer under which input-level methods (attributions) keep their maps
INPUT = "input"


@dataclass
class Explanation:
    """CAMs for a batch of items, for every requested method and layer.

    cams are (N, *input_spatial) in [0, 1]; raws are (N, *layer_spatial), post-ReLU and
    unnormalised; score ranges are (N, 2): each item's (min, max) of the upsampled map
    before normalisation, so that ``cam * (max - min) + min`` restores it.

    Input-level methods (saliency, integrated gradients, ...) keep their maps under the
    pseudo-layer "input": ``attribution(method)`` is the signed attribution shaped like the
    input, channels first ((N, T) for token ids); ``cam(method, "input")`` its channel sum's
    absolute value, min-max normalised per row; ``info(method)`` per-row extras a method
    reports (``completeness_gap(method)`` for integrated gradients).

    flags are (N,) uint8 bit masks of onnx_cam.RowFlag: NaN / Inf met in the row's input,
    scores, activations, gradients or maps, an all-zero gradient, a constant map (0: none);
    ``flag_reasons(row)`` says them in words.
    """

    logits: np.ndarray
    probs: np.ndarray
    predicted: np.ndarray
    targets: np.ndarray
    foils: np.ndarray | None
    methods: list[str]
    layers: list[str]
    cams: dict[tuple[str, str], np.ndarray]
    raws: dict[tuple[str, str], np.ndarray]
    ranges: dict[tuple[str, str], np.ndarray]
    head: str | None = None
    class_names: list[str] | None = None
    layer_aliases: dict[str, str] = field(default_factory=dict)
    items: np.ndarray | None = None   # (rows,) input item of each row; None: row i is item i
    score: str = "logits"
    flags: np.ndarray | None = None   # (rows,) uint8 RowFlag masks; None: no flag raised
    attributions: dict[str, np.ndarray] = field(default_factory=dict)
    infos: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self):
        if self.items is None:
            self.items = np.arange(len(self.logits))
        if self.flags is None:
            self.flags = np.zeros(len(self.logits), np.uint8)

    def flag_reasons(self, row: int) -> list[str]:
        """What the flags of `row` stand for, in words (empty when the row is clean)."""
        return describe_flags(self.flags[row])

    @property
    def flagged(self) -> np.ndarray:
        """The rows with any flag raised."""
        return np.flatnonzero(self.flags)

    # ---- lookup ------------------------------------------------------------------------
    def _key(self, method: str | None, layer: str | None) -> tuple[str, str]:
        if method is None:
            if len(self.methods) != 1:
                raise MethodError(f"Several methods were computed ({self.methods}); name one.")
            method = self.methods[0]
        method = get_method(method).name
        if method not in self.methods:
            raise MethodError(f"Method {method!r} was not computed; computed: {self.methods}.")
        if method in self.attributions:
            if layer not in (None, INPUT):
                raise LayerError(f"{method} attributes to the model input: its map is under "
                                 f"layer {INPUT!r}, not {layer!r}.")
            return method, INPUT
        if layer is None:
            if len(self.layers) != 1:
                raise LayerError(f"Several layers were explained ({self.layers}); name one.")
            layer = self.layers[0]
        layer = self.layer_aliases.get(layer, layer)
        if layer not in self.layers:
            raise LayerError(f"Layer {layer!r} was not explained; explained: {self.layers}.")
        return method, layer

    def cam(self, method: str | None = None, layer: str | None = None) -> np.ndarray:
        """(N, *input_spatial) float32 in [0, 1]."""
        return self.cams[self._key(method, layer)]

    def raw(self, method: str | None = None, layer: str | None = None) -> np.ndarray:
        """(N, *layer_spatial) float32, >= 0, at the layer's own resolution."""
        return self.raws[self._key(method, layer)]

    def score_range(self, method: str | None = None, layer: str | None = None) -> np.ndarray:
        """(N, 2) float32: per item (min, max) of the upsampled map before normalisation."""
        return self.ranges[self._key(method, layer)]

    def refined(self, method: str | None = None, layers=None) -> np.ndarray:
        """RefineCAM (as pytorch-grad-cam 1.5.7's RefineCAM): the product over `layers`
        (default: every layer explained) of the method's [0, 1] maps, scaled again per row
        as pytorch-grad-cam scales (x - min) / (max - min + 1e-7). Multiplying a shallow
        layer's detailed map by deeper ones keeps the detail where they agree."""
        names = self.layers if layers is None else [self._key(method, la)[1] for la in layers]
        product = np.prod([self.cam(method, name) for name in names], axis=0)
        flat = product.reshape(len(product), -1)
        shape = (-1,) + (1,) * (product.ndim - 1)
        low = flat.min(axis=1).reshape(shape)
        return ((product - low) / (flat.max(axis=1).reshape(shape) - low + 1e-7)).astype(
            np.float32)

    def attribution(self, method: str | None = None) -> np.ndarray:
        """(N, C, *input_spatial) float32, signed, channels first; (N, T) for token ids; an
        (N, 1, *input_spatial) map for methods scoring all channels of a position at once."""
        return self.attributions[self._input_method(method)]

    def info(self, method: str | None = None) -> dict[str, np.ndarray]:
        """Per-row extras an input-level method reported, each (N,) (may be empty)."""
        return dict(self.infos.get(self._input_method(method), {}))

    def completeness_gap(self, method: str | None = None) -> np.ndarray:
        """(N,) sum(attribution) - (f(x) - f(baseline)) per row (integrated gradients)."""
        name = self._input_method(method)
        if "completeness_gap" not in self.infos.get(name, {}):
            raise MethodError(f"{name} reports no completeness gap; integrated gradients do.")
        return self.infos[name]["completeness_gap"]

    def _input_method(self, method: str | None) -> str:
        if method is None:
            if len(self.attributions) != 1:
                raise MethodError(f"Input attributions were computed for "
                                  f"{list(self.attributions)}; name one method.")
            return next(iter(self.attributions))
        name = get_method(method).name
        if name not in self.attributions:
            what = "a CAM method (maps per layer: cam / raw)" if name in self.methods else \
                f"not computed (computed: {self.methods})"
            raise MethodError(f"{name} has no input attribution: it is {what}.")
        return name

    @property
    def maps(self) -> list[tuple[str, str]]:
        """Every (method, layer) with a map; input-level methods under layer "input"."""
        keys: list[tuple[str, str]] = []
        for m in self.methods:
            keys += [(m, INPUT)] if m in self.attributions else [(m, lay) for lay in self.layers]
        return keys

    @property
    def score_ranges(self) -> dict[tuple[str, str], np.ndarray]:
        return dict(self.ranges)

    def __len__(self) -> int:
        return len(self.logits)

    def __repr__(self) -> str:
        return (f"Explanation({len(self)} items, methods={self.methods}, layers={self.layers}, "
                f"head={self.head})")

    # ---- persistence -------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write one .npz file; the file appears whole or not at all."""
        arrays = {"logits": self.logits, "probs": self.probs, "predicted": self.predicted,
                  "targets": self.targets, "items": self.items, "flags": self.flags}
        if self.foils is not None:
            arrays["foils"] = self.foils
        for store, prefix in ((self.cams, "cam"), (self.raws, "raw"), (self.ranges, "range")):
            for (method, layer), value in store.items():
                arrays[_SEP.join((prefix, method, layer))] = value
        for method, value in self.attributions.items():
            arrays[_SEP.join(("attribution", method))] = value
        for method, extras in self.infos.items():
            for name, value in extras.items():
                arrays[_SEP.join(("info", method, name))] = value
        meta = {"methods": self.methods, "layers": self.layers, "head": self.head,
                "class_names": self.class_names, "layer_aliases": self.layer_aliases,
                "score": self.score}
        arrays["meta"] = np.array(json.dumps(meta))
        write_atomic(path, lambda handle: np.savez_compressed(handle, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Explanation:
        """Read a file written by save(); never unpickles. Files written before flags existed
        load with no flag raised."""
        try:
            with np.load(os.fspath(path), allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            meta = json.loads(str(arrays.pop("meta")))
            stores: dict[str, dict] = {"cam": {}, "raw": {}, "range": {}}
            attributions: dict[str, np.ndarray] = {}
            infos: dict[str, dict[str, np.ndarray]] = {}
            for key in [k for k in arrays if _SEP in k]:
                prefix, rest = key.split(_SEP, 1)
                if prefix == "attribution":
                    attributions[rest] = arrays.pop(key)
                elif prefix == "info":
                    method, name = rest.split(_SEP, 1)
                    infos.setdefault(method, {})[name] = arrays.pop(key)
                else:
                    method, layer = rest.split(_SEP, 1)
                    stores[prefix][(method, layer)] = arrays.pop(key)
            return cls(arrays["logits"], arrays["probs"], arrays["predicted"],
                       arrays["targets"], arrays.get("foils"), meta["methods"], meta["layers"],
                       stores["cam"], stores["raw"], stores["range"], meta["head"],
                       meta["class_names"], meta["layer_aliases"], arrays["items"],
                       meta["score"], arrays.get("flags"), attributions, infos)
        except Exception as exc:
            raise OnnxCamError(
                f"{os.fspath(path)!r} is not an explanation saved by Explanation.save "
                f"({type(exc).__name__}: {exc})."
            ) from None
