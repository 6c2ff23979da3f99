"""Sanity checks (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

A map that explains the model must change when the model's parameters do. Cascading
randomisation redraws the ONNX initializers of one parameter layer after another, from the
output down (on a copy of the ModelProto; the model itself is untouched), explains the same
rows with each randomised model and compares the maps with the original ones (Spearman rank
correlation, SSIM). The random-label baseline compares each map with the map of a random
other class of the same item; a map that barely changes with the label is not class
specific. (Adebayo's data randomisation test retrains on permuted labels; an ONNX model
cannot be retrained here.)
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ..explainer import Explainer
from .options import MetricError, Purpose, row_rng
from .scoring import Rows
from .similarity import spearman, ssim

# ops whose float initializers are a layer's parameters
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN"})
# normalisations: their learnt inputs (scale, bias; not running mean / variance); they join
# the weighted layer that feeds them, else stand alone
NORMALIZATIONS = {"BatchNormalization": (1, 2), "InstanceNormalization": (1, 2),
                  "LayerNormalization": (1, 2)}


@dataclass(frozen=True)
class ParameterLayer:
    """One randomisable layer: a weighted node with its bias Add / normalisation, if any."""

    name: str                      # the weighted (or normalisation) node's name
    initializers: tuple[str, ...]  # the initializers redrawn when it is randomised


def parameter_layers(proto: onnx.ModelProto) -> list[ParameterLayer]:
    """The model's parameter layers, from the output (top) down."""
    floats = {i.name for i in proto.graph.initializer
              if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                 onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)}
    # constant tensors -> the float initializers they are computed from: a weight may reach
    # its node through Identity (the torch exporter shares equal-valued parameters, e.g.
    # fresh BatchNorm scales), Transpose (a Linear on (N, T, C)), Reshape, Cast ...
    roots: dict[str, tuple[str, ...]] = {i.name: (i.name,) if i.name in floats else ()
                                         for i in proto.graph.initializer}
    layers: list[tuple[str, list[str]]] = []
    owner: dict[str, int] = {}     # tensor -> index of the layer whose weighted node made it
    claimed: set[str] = set()      # an initializer shared by several nodes is redrawn once
    for node in proto.graph.node:
        inputs = [t for t in node.input if t]
        if all(t in roots for t in inputs):    # constant folding's work, not a layer
            derived = tuple(dict.fromkeys(r for t in inputs for r in roots[t]))
            roots.update((out, derived) for out in node.output)
            continue
        name = node.name or f"{node.op_type}:{node.output[0]}"
        learnt = (NORMALIZATIONS[node.op_type] if node.op_type in NORMALIZATIONS
                  else range(len(node.input)))
        params = [r for i in learnt if i < len(node.input) and node.input[i] in roots
                  for r in roots[node.input[i]]]
        params = [p for p in dict.fromkeys(params) if p not in claimed]
        data = [t for t in inputs if t not in roots]
        joins = owner.get(data[0]) if len(data) == 1 else None
        if node.op_type in WEIGHTED_OPS and params:
            layers.append((name, params))
            index = len(layers) - 1
        elif node.op_type in NORMALIZATIONS and params and joins is None:
            layers.append((name, params))
            index = len(layers) - 1
        elif node.op_type in (*NORMALIZATIONS, "Add") and params and joins is not None:
            layers[joins][1].extend(params)   # a bias or normalisation of a weighted node
            index = joins
        else:
            continue
        claimed.update(params)
        owner.update((out, index) for out in node.output)
    return [ParameterLayer(name, tuple(params)) for name, params in reversed(layers)]


def randomize(proto: onnx.ModelProto, layers, *, seed: int = 0,
              mode: str = "normal") -> onnx.ModelProto:
    """A copy of `proto` with the initializers of `layers` redrawn.

    mode "normal": Gaussian values with each tensor's own mean and standard deviation (a
    tensor that is constant, e.g. a fresh BatchNorm scale, stays as it is: its
    re-initialisation); "shuffle": a random permutation of its values. A layer's values
    depend on (seed, layer name) only, so a cascade's steps agree on the layers they share.
    """
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    tensors = {t.name: t for t in out.graph.initializer}
    for layer in layers:
        rng = np.random.default_rng([seed, zlib.crc32(layer.name.encode())])
        for name in layer.initializers:
            values = numpy_helper.to_array(tensors[name])
            if mode == "shuffle":
                drawn = rng.permutation(values.ravel()).reshape(values.shape)
            else:
                drawn = rng.normal(values.mean(), values.std(), values.shape)
            tensors[name].CopyFrom(numpy_helper.from_array(drawn.astype(values.dtype), name))
    return out


def explain_rows(explainer: Explainer, rows: Rows, method: str, layer: str, score: str,
                 batch_size: int, targets: np.ndarray | None = None) -> np.ndarray:
    """The maps of the rows' (item, target, foil) from `explainer`, (rows, *spatial)."""
    targets = rows.targets if targets is None else targets
    res = explainer.explain(rows.given[rows.items], targets=targets.tolist(),
                            foils=None if rows.foils is None else rows.foils.tolist(),
                            layers=layer, methods=method, score=score, batch_size=batch_size)
    return res.cam(method, layer)


def _parameter_layers(explainer: Explainer) -> list[ParameterLayer]:
    layers = parameter_layers(explainer.model.proto)
    if not layers:
        raise MetricError("The model has no parameter layer (no Conv / Gemm / MatMul / "
                          "normalisation with initializers) to randomise.")
    return layers


def _randomized_maps(explainer: Explainer, rows: Rows, method: str, layer: str, score: str,
                     layers: list[ParameterLayer], mode: str, seed: int,
                     batch_size: int) -> np.ndarray:
    """The rows' maps from a copy of the model with `layers` randomised."""
    proto = randomize(explainer.model.proto, layers, seed=seed, mode=mode)
    return explain_rows(explainer_of(explainer, proto), rows, method, layer, score, batch_size)


def explainer_of(explainer: Explainer, proto: onnx.ModelProto) -> Explainer:
    """An Explainer of `proto` (a randomised copy of the model) set up as `explainer`."""
    return Explainer(proto, class_names=explainer.class_names,
                     output=explainer.model.output_name, runtime=explainer.runtime,
                     channels_last=explainer.model.channels_last)


@dataclass(frozen=True)
class Cascade:
    """Similarity of the maps to the original ones after each randomisation step."""

    layers: list[str]      # the layer randomised at each step (cumulative), top first
    spearman: np.ndarray   # (steps, rows)
    ssim: np.ndarray       # (steps, rows)


def cascading_randomization(explainer: Explainer, rows: Rows, method: str, layer: str,
                            score: str, *, steps: int | None = None, mode: str = "normal",
                            seed: int = 0, batch_size: int = 64) -> Cascade:
    """Randomise the top 1, 2, ..., `steps` (default: all) parameter layers in turn; compare
    each step's maps with `rows.maps`. Each step builds one Explainer and one explain run."""
    layers = _parameter_layers(explainer)[:steps]
    rho, sim = [], []
    for k in range(1, len(layers) + 1):
        maps = _randomized_maps(explainer, rows, method, layer, score, layers[:k], mode, seed,
                                batch_size)
        rho.append(spearman(rows.maps, maps))
        sim.append(ssim(rows.maps, maps))
    return Cascade([p.name for p in layers], np.array(rho), np.array(sim))


def randomized_similarity(explainer: Explainer, rows: Rows, method: str, layer: str,
                          score: str, *, mode: str = "normal", seed: int = 0,
                          batch_size: int = 64) -> dict[str, np.ndarray]:
    """{"randomization_spearman", "randomization_ssim"}: the maps of the model with every
    parameter layer randomised (the cascade's last step) against the original maps."""
    maps = _randomized_maps(explainer, rows, method, layer, score, _parameter_layers(explainer),
                            mode, seed, batch_size)
    return {"randomization_spearman": spearman(rows.maps, maps),
            "randomization_ssim": ssim(rows.maps, maps)}


def random_labels(rows: Rows, classes: int, seed: int = 0) -> np.ndarray:
    """Per row, a class drawn uniformly from those that are neither its target nor its foil."""
    labels = np.empty(len(rows), np.int64)
    for r in range(len(rows)):
        others = np.setdiff1d(np.arange(classes), [rows.targets[r], rows.foil(r)])
        if not len(others):
            raise MetricError(f"Row {r} has no other class to draw a random label from (the "
                              f"model scores {classes} classes).")
        labels[r] = row_rng(seed, rows.ids[r], Purpose.LABEL).choice(others)
    return labels


def random_label_similarity(explainer: Explainer, rows: Rows, method: str, layer: str,
                            score: str, *, seed: int = 0,
                            batch_size: int = 64) -> dict[str, np.ndarray]:
    """{"random_label_spearman", "random_label_ssim"}: each map against the same item's map
    for a random other class (lower: more class specific)."""
    labels = random_labels(rows, explainer.num_classes, seed)
    maps = explain_rows(explainer, rows, method, layer, score, batch_size, targets=labels)
    return {"random_label_spearman": spearman(rows.maps, maps),
            "random_label_ssim": ssim(rows.maps, maps)}
