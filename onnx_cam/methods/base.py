"""The shared base of CAM methods and the registry that finds them by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from .. import kernels
from ..errors import MethodError

if TYPE_CHECKING:
    from ..probes import Probe

METHODS: dict[str, type[CamMethod]] = {}


@dataclass
class LayerBatch:
    """What a method sees for one layer and one batch of items."""

    activations: np.ndarray            # (n, C, *layer_spatial)
    gradients: np.ndarray | None       # d score / d activations, None for gradient-free runs
    inputs: np.ndarray                 # (n, C_in, *input_spatial), the model's input
    seeds: np.ndarray                  # (n, classes): the score each item explains is seed . logits
    layer: str = ""                    # the layer's ONNX tensor name
    probe: Probe | None = None         # extra forward passes (Score-CAM, Ablation-CAM)
    hvp: np.ndarray | None = None      # Hessian of the score x activations (uses_hvp methods)
    # rerun(x) -> (activations, gradients) of this layer for modified inputs x shaped like
    # `inputs`, explaining the same seeds (Smooth Grad-CAM++)
    rerun: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None


@dataclass
class InputBatch:
    """What an input-level method sees for one batch of rows."""

    inputs: np.ndarray                 # (n, C, *spatial) float32; (n, T) for token ids
    seeds: np.ndarray                  # (n, classes): each row explains seed . logits
    probe: Probe                       # forward passes of modified inputs (input_scores)
    # gradients(x, seeds) -> d(seeds . score) / dx shaped like x, one ONNX Runtime run a batch
    gradients: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    # scores(x, seeds) -> (m,) seeds . score, the score explained (logits, log_probs or probs)
    scores: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    rows: np.ndarray | None = None     # (n,) the rows' indices in the explain call
    items: np.ndarray | None = None    # (n,) the input item of each row
    tokens: bool = False               # inputs are the embeddings (n, T, E) of token ids
    # per-row extras a method reports, each (n,): e.g. info["completeness_gap"]
    info: dict[str, np.ndarray] = field(default_factory=dict)
    # layer_gradients(layer) -> (activations, d score / d activations), (n, C, *layer_spatial),
    # with the true ReLU gradient; layer None: the explain call's one layer
    layer_gradients: Callable[[str | None], tuple[np.ndarray, np.ndarray]] | None = None
    # bias_gradients(x, seeds) -> (d score / dx, [(bias (C,), d score / d output), ...]) for
    # every biased Conv / BatchNormalization with spatial output (FullGrad)
    bias_gradients: Callable[[np.ndarray, np.ndarray],
                             tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]] | None = None
    # attention(x, seeds, gradients) -> (onnx_cam.rollout.Attention, the attention
    # probabilities per block (n, heads, T, T), their score gradients or None) (rollout)
    attention: Callable | None = None


def first_component(maps: np.ndarray) -> np.ndarray:
    """Per item, the projection of the (positions x channels) matrix on its first principal axis.

    maps: (n, C, *spatial) -> (n, *spatial). Centred per channel before the SVD, as in
    EigenCAM (Muhammad & Yeasin 2020) and pytorch-grad-cam's get_2d_projection.
    The singular vector's sign is arbitrary (LAPACK's choice); it is oriented so that the
    projection correlates positively with the channel sum of `maps`, which makes the map
    deterministic. pytorch-grad-cam keeps LAPACK's sign.
    """
    n, c = maps.shape[:2]
    flat = np.nan_to_num(maps.reshape(n, c, -1)).transpose(0, 2, 1).astype(np.float64)
    centred = flat - flat.mean(axis=1, keepdims=True)
    out = np.empty(flat.shape[:2], np.float32)
    for i in range(n):
        _, _, vt = np.linalg.svd(centred[i], full_matrices=False)
        projection = centred[i] @ vt[0]
        total = centred[i].sum(axis=1)
        out[i] = -projection if projection @ total < 0 else projection
    return out.reshape((n, *maps.shape[2:]))


class CamMethod:
    """Turns a layer's activations (and score gradients) into raw CAMs (n, *layer_spatial)."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    level: ClassVar[str] = "layer"     # "input": attributes to the model input (InputMethod)
    uses_gradients: ClassVar[bool] = True
    uses_target: ClassVar[bool] = True  # False: the map does not depend on what is explained
    uses_hvp: ClassVar[bool] = False   # needs LayerBatch.hvp (a second-order graph)
    # multiplies the input by masks: meaningless for integer token ids
    scales_input: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            for key in (cls.name, *cls.aliases):
                METHODS[_key(key)] = cls

    def raw(self, batch: LayerBatch, eigen_smooth: bool = False) -> np.ndarray:
        raise NotImplementedError


class InputMethod(CamMethod):
    """Methods that attribute the score to the model's input itself rather than to a layer."""

    level = "input"
    # "guided" / "deconvolution": `gradients` uses that ReLU backward rule (rules/guided.py)
    relu_rule: ClassVar[str | None] = None
    input_gradients: ClassVar[bool] = True  # False: never differentiates to the input

    def inputs_per_row(self) -> int:
        """How many inputs per row one attribute call differentiates (steps, samples): rows
        per call are chosen so that they fit the memory budget."""
        return 1

    def attribute(self, batch: InputBatch) -> np.ndarray:
        """(n, C, *spatial) float32, signed; (n, 1, *spatial) for a method that perturbs all
        channels of a position together."""
        raise NotImplementedError


class WeightedChannels(CamMethod):
    """Methods whose map is ReLU(sum_c w_c A_c): they only define the channel weights."""

    def weights(self, batch: LayerBatch) -> np.ndarray:
        raise NotImplementedError

    def raw(self, batch: LayerBatch, eigen_smooth: bool = False) -> np.ndarray:
        w = self.weights(batch).astype(np.float32)
        if eigen_smooth:
            weighted = w.reshape(w.shape + (1,) * (batch.activations.ndim - 2)) * batch.activations
            return np.maximum(first_component(weighted), 0)
        return kernels.weighted_channel_sum(batch.activations, w)


class ElementwiseChannels(CamMethod):
    """Methods whose map is ReLU(sum_c M_c) for a per-position channel map M."""

    def elementwise(self, batch: LayerBatch) -> np.ndarray:
        raise NotImplementedError

    def raw(self, batch: LayerBatch, eigen_smooth: bool = False) -> np.ndarray:
        maps = self.elementwise(batch)
        if eigen_smooth:
            return np.maximum(first_component(maps), 0)
        return np.maximum(maps.sum(axis=1, dtype=np.float32), 0)


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(" ", "")


def get_method(name) -> CamMethod:
    """A method by name (with its default settings), or a configured method instance as is."""
    if isinstance(name, CamMethod):
        return name
    cls = METHODS.get(_key(name))
    if cls is None:
        known = sorted({c.name for c in METHODS.values()})
        raise MethodError(f"Unknown CAM method {name!r}. Available methods: {', '.join(known)}.")
    return cls()
