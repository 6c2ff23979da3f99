"""Deep Feature Factorization (Collins et al., ECCV 2018): a layer's activations over a whole
batch factorised into a few non-negative concepts, and where each item shows each concept.

As pytorch-grad-cam's DeepFeatureFactorization: the (channels x batch-positions) activation
matrix, each channel shifted by its minimum, is factorised by scikit-learn's NMF defaults
(coordinate descent, "random" initialisation with seed 0, tol 1e-4, 200 iterations), here in
numpy for any number of spatial axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels


@dataclass
class Concepts:
    """What Explainer.factorize returns for N items and k concepts at one layer."""

    vectors: np.ndarray          # (C, k): each concept's channel profile (basis + offsets)
    raw: np.ndarray              # (N, k, *layer_spatial): each concept's weight per position
    maps: np.ndarray             # (N, k, *input_spatial): raw resized, min-max scaled per map
    scores: np.ndarray | None    # (k, classes): the head's logits on a layer filled with a
    #                              concept at every position (None: not asked for)

    def top_classes(self, k: int = 3) -> np.ndarray:
        """(concepts, k) class indices each concept scores highest."""
        return np.argsort(-self.scores, axis=1, kind="stable")[:, :k]


def factorize(activations: np.ndarray, components: int, spatial: tuple[int, ...],
              seed: int = 0, tol: float = 1e-4, max_iter: int = 200) -> Concepts:
    """Concepts of (N, C, *layer_spatial) activations; maps resized to `spatial`."""
    n, c = activations.shape[:2]
    positions = activations.shape[2:]
    matrix = np.nan_to_num(np.moveaxis(activations, 1, 0).reshape(c, -1))
    offset = matrix.min(axis=1, keepdims=True)
    basis, weights = nmf(matrix - offset, components, seed, tol, max_iter)
    raw = np.moveaxis(weights.reshape(components, n, *positions), 0, 1).astype(np.float32)
    maps, _ = kernels.resize_normalize(raw.reshape(n * components, *positions), spatial)
    return Concepts(basis + offset, raw, maps.reshape(n, components, *spatial), None)


def nmf(x: np.ndarray, k: int, seed: int, tol: float, max_iter: int):
    """W (n, k), H (k, f) >= 0 with x ~ W H, by cyclic coordinate descent on W then H
    (Cichocki & Phan 2009), stopping when the projected gradient's L1 norm falls below `tol`
    of the first sweep's. Initialised as scikit-learn's init="random"."""
    rng = np.random.RandomState(seed)
    scale = np.sqrt(x.mean() / k)
    h = np.abs(scale * rng.standard_normal((k, x.shape[1]))).astype(x.dtype)
    w = np.abs(scale * rng.standard_normal((x.shape[0], k))).astype(x.dtype)
    ht = np.ascontiguousarray(h.T)
    first = None
    for _ in range(max_iter):
        violation = _sweep(x, w, ht) + _sweep(x.T, ht, w)
        first = violation if first is None else first
        if first == 0 or violation / first <= tol:
            break
    return w, ht.T


def _sweep(x: np.ndarray, w: np.ndarray, ht: np.ndarray) -> float:
    """One pass over the columns of w (in place), each the exact minimiser with the others
    fixed; returns the L1 norm of the projected gradients met."""
    gram, target = ht.T @ ht, x @ ht
    violation = 0.0
    for t in range(w.shape[1]):
        grad = w @ gram[t] - target[:, t]
        violation += np.abs(np.where(w[:, t] == 0, np.minimum(grad, 0), grad)).sum()
        if gram[t, t] != 0:
            w[:, t] = np.maximum(w[:, t] - grad / gram[t, t], 0)
    return float(violation)
