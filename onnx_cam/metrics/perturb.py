"""Removing input positions: which ones (ranked by a map) and what replaces them.

One item is (C, *spatial), channels first; a map is (*spatial). Everything here works over
the flattened spatial axes, so signals, images and volumes share one code path.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.linalg import spsolve

from . import multigrid
from .multigrid import neighbour_stencil


def ranked_masks(cam: np.ndarray, counts: np.ndarray, most_first: bool) -> np.ndarray:
    """(len(counts), *spatial) bool: mask k removes the counts[k] best (most_first) or worst
    ranked positions of `cam`. Ties go to the lower flat position first (a stable sort)."""
    flat = cam.ravel()
    order = np.argsort(-flat if most_first else flat, kind="stable")
    rank = np.empty(flat.size, np.int64)
    rank[order] = np.arange(flat.size)
    masks = rank[None, :] < np.asarray(counts)[:, None]
    return masks.reshape((len(counts), *cam.shape))


def removal_counts(positions: int, fractions) -> np.ndarray:
    """How many of `positions` a removed fraction means (rounded to the nearest)."""
    return np.rint(np.asarray(fractions, float) * positions).astype(np.int64)


def linear_impute(item: np.ndarray, removed: np.ndarray, noise: float = 0.0,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """Each removed position becomes the weighted mean of its neighbours (removed or not),
    solved jointly as one sparse linear system per item, plus Gaussian noise of std `noise`.

    item: (C, *spatial); removed: (*spatial) bool. ROAD's noisy linear imputation (Rong et
    al. 2022) with `neighbour_stencil` weights; out-of-bounds neighbours are left out and the
    weights renormalised. In 1D without noise this is linear interpolation between the kept
    samples (constant beyond the first / last one). With every position removed nothing is
    left to interpolate from: each channel is filled with its mean.
    """
    return _noisy(item, removed, _interpolated(item, removed), noise,
                  _draws(item, removed, noise, rng))


def linear_impute_all(item: np.ndarray, masks: np.ndarray, noise: float = 0.0,
                      rng: np.random.Generator | None = None) -> np.ndarray:
    """(K, C, *spatial): `linear_impute` of the item under each of the K masks, the same
    numbers as K calls in turn: the noise is drawn first, mask by mask, then the solves run
    on a thread per core (the compiled solver releases the GIL)."""
    rng = rng if rng is not None or noise <= 0 else np.random.default_rng()
    draws = [_draws(item, mask, noise, rng) for mask in masks]

    def impute(k):
        return _noisy(item, masks[k], _interpolated(item, masks[k]), noise, draws[k])

    run = _pool(os.getpid()).map if len(masks) > 1 else map
    return np.stack(list(run(impute, range(len(masks)))))


@cache
def _pool(process: int) -> ThreadPoolExecutor:
    """A thread per core, one pool per process: a forked child has none of its parent's
    threads, and would wait on the parent's pool forever."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return ThreadPoolExecutor(max_workers=cores or 1, thread_name_prefix="impute")


def _interpolated(item: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """(C, positions) float64: the item with its removed positions imputed, no noise."""
    shape, channels = removed.shape, item.shape[0]
    flat_removed = removed.ravel()
    unknown = np.flatnonzero(flat_removed)
    m = len(unknown)
    if m == 0:
        return item.reshape(channels, -1).astype(np.float64)
    filled = multigrid.solve_imputation(item, removed) \
        if len(shape) > 1 and m < flat_removed.size else None
    if filled is None:
        flat_item = item.reshape(channels, -1).astype(np.float64)
        filled = flat_item.copy()
        if m == flat_removed.size:
            filled[:] = flat_item.mean(axis=1, keepdims=True)
        else:
            filled[:, unknown] = _solve_directly(flat_item, flat_removed, unknown, shape).T
    return np.ascontiguousarray(filled).reshape(channels, -1)


def _draws(item: np.ndarray, removed: np.ndarray, noise: float,
           rng: np.random.Generator | None) -> np.ndarray | None:
    """The standard normal draws (C, removed positions) of one imputation's noise."""
    if noise <= 0 or not removed.any():
        return None
    rng = rng if rng is not None else np.random.default_rng()
    return rng.standard_normal((item.shape[0], int(removed.sum())))


def _noisy(item: np.ndarray, removed: np.ndarray, filled: np.ndarray, noise: float,
           draws: np.ndarray | None) -> np.ndarray:
    """`filled` (C, positions, float64, overwritten) plus noise x `draws` on the removed
    positions, as the item's shape and type."""
    if draws is not None:   # by flat index: 2D or boolean indexing is several times slower
        positions = filled.shape[1]
        flat = (np.flatnonzero(removed.ravel()) + positions * np.arange(len(filled))[:, None])
        filled.reshape(-1)[flat.ravel()] += noise * draws.ravel()
    return filled.reshape(item.shape).astype(item.dtype)


def _solve_directly(flat_item, flat_removed, unknown, shape) -> np.ndarray:
    """(m, C): the values of the m unknown positions, from diag * v_i - sum_j w_ij v_j (j
    unknown) = sum_j w_ij x_j (j known), over in-bounds neighbours j of i (diag: their
    weights' sum), by a direct sparse solve: 1D systems are tridiagonal; in 2D and 3D this
    is the fallback when multigrid-preconditioned conjugate gradients do not converge."""
    m = len(unknown)
    variable = np.full(flat_removed.size, -1, np.int64)
    variable[unknown] = np.arange(m)
    coords = np.array(np.unravel_index(unknown, shape))           # (ndim, m)
    extent = np.array(shape)[:, None]
    diagonal = np.zeros(m)
    rhs = np.zeros((m, flat_item.shape[0]))
    rows, cols, values = [], [], []
    offsets, weights = neighbour_stencil(len(shape))
    for offset, weight in zip(offsets, weights):
        moved = coords + offset[:, None]
        inside = np.flatnonzero(((moved >= 0) & (moved < extent)).all(axis=0))
        neighbour = np.ravel_multi_index(moved[:, inside], shape)
        diagonal[inside] += weight
        is_unknown = flat_removed[neighbour]
        rows.append(inside[is_unknown])
        cols.append(variable[neighbour[is_unknown]])
        values.append(np.full(is_unknown.sum(), -weight))
        known = inside[~is_unknown]  # each row appears once per offset: no repeated indices
        rhs[known] += weight * flat_item[:, neighbour[~is_unknown]].T
    rows.append(np.arange(m))
    cols.append(np.arange(m))
    values.append(diagonal)
    system = sparse.coo_matrix((np.concatenate(values),
                                (np.concatenate(rows), np.concatenate(cols))), shape=(m, m))
    return np.asarray(spsolve(system.tocsc(), rhs)).reshape(m, -1)


class Perturbation:
    """Replaces the removed positions of an item: by a fixed baseline ("zero", "mean",
    "blur", an array) or by linear imputation ("interp", with optional noise: ROAD)."""

    def __init__(self, baseline, blur_sigma: float = 5.0, noise: float = 0.0):
        self.baseline, self.blur_sigma, self.noise = baseline, blur_sigma, noise

    @property
    def imputes(self) -> bool:
        return isinstance(self.baseline, str) and self.baseline == "interp"

    def fill(self, item: np.ndarray) -> np.ndarray:
        """The fixed baseline of one item (C, *spatial)."""
        if not isinstance(self.baseline, str):
            return np.broadcast_to(np.asarray(self.baseline, item.dtype), item.shape)
        if self.baseline == "zero":
            return np.zeros_like(item)
        if self.baseline == "mean":
            axes = tuple(range(1, item.ndim))
            return np.broadcast_to(item.mean(axis=axes, keepdims=True), item.shape)
        if self.baseline == "blur":
            sigma = (0.0,) + (self.blur_sigma,) * (item.ndim - 1)
            return ndimage.gaussian_filter(item, sigma, mode="reflect")
        raise ValueError(f"{self.baseline!r} has no fixed baseline")

    def apply(self, item: np.ndarray, masks: np.ndarray,
              rng: np.random.Generator | None = None) -> np.ndarray:
        """(K, C, *spatial): the item with the positions of each of the K masks replaced."""
        if self.imputes:
            return linear_impute_all(item, masks, self.noise, rng)
        return np.where(masks[:, None], self.fill(item)[None], item[None])
