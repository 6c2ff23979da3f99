"""Channel reductions: CAM-weighted channel sums and the spatial mean of gradients.

All kernels work on spatial axes flattened to one, ``(N, C, S)``, so a single kernel serves
1D, 2D and 3D feature maps.
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._common import BLOCK, as_f32, check_spatial, threads_for


@numba.njit(cache=True, parallel=True)
def _weighted_sum_kernel(acts, weights, out):
    """out[n, s] = ReLU(sum_c weights[n, c] * acts[n, c, s]); parallel over (item, block)."""
    n_items, n_ch, size = acts.shape
    zero = np.float32(0.0)
    n_blocks = (size + BLOCK - 1) // BLOCK
    for job in numba.prange(n_items * n_blocks):
        n = job // n_blocks
        start = (job - n * n_blocks) * BLOCK
        stop = min(start + BLOCK, size)
        for s in range(start, stop):
            out[n, s] = zero
        for c in range(n_ch):
            w = weights[n, c]
            for s in range(start, stop):
                out[n, s] += w * acts[n, c, s]
        for s in range(start, stop):
            if out[n, s] < zero:
                out[n, s] = zero


@numba.njit(cache=True, parallel=True)
def _elementwise_sum_kernel(acts, grads, out):
    """out[n, s] = ReLU(sum_c acts[n, c, s] * grads[n, c, s]); parallel over (item, block)."""
    n_items, n_ch, size = acts.shape
    zero = np.float32(0.0)
    n_blocks = (size + BLOCK - 1) // BLOCK
    for job in numba.prange(n_items * n_blocks):
        n = job // n_blocks
        start = (job - n * n_blocks) * BLOCK
        stop = min(start + BLOCK, size)
        for s in range(start, stop):
            out[n, s] = zero
        for c in range(n_ch):
            for s in range(start, stop):
                out[n, s] += acts[n, c, s] * grads[n, c, s]
        for s in range(start, stop):
            if out[n, s] < zero:
                out[n, s] = zero


@numba.njit(cache=True, parallel=True)
def _spatial_mean_kernel(x, out):
    """out[n, c] = mean_s x[n, c, s], accumulated in float64; parallel over (item, channel)."""
    n_items, n_ch, size = x.shape
    for row in numba.prange(n_items * n_ch):
        n = row // n_ch
        c = row - n * n_ch
        acc = 0.0
        for s in range(size):
            acc += np.float64(x[n, c, s])
        out[n, c] = np.float32(acc / size)


def _flat_acts(acts: ArrayLike, name: str) -> tuple[NDArray[np.float32], tuple[int, ...]]:
    arr = as_f32(acts)
    spatial = check_spatial(arr, name, leading=2)
    return arr.reshape(arr.shape[0], arr.shape[1], int(np.prod(spatial))), spatial


def weighted_channel_sum(acts: ArrayLike, weights: ArrayLike) -> NDArray[np.float32]:
    """ReLU of the channel sum weighted per item: ``(N, C, *spatial), (N, C) -> (N, *spatial)``.

    ``raw[n] = max(0, sum_c weights[n, c] * acts[n, c])`` (Grad-CAM and friends). NaN propagates.
    """
    flat, spatial = _flat_acts(acts, "acts")
    w = as_f32(weights)
    if w.shape != flat.shape[:2]:
        raise ValueError(
            f"weights must have shape (N, C) = {flat.shape[:2]} to match acts; got {w.shape}"
        )
    out = np.empty((flat.shape[0], flat.shape[2]), dtype=np.float32)
    with threads_for(flat.size):
        _weighted_sum_kernel(flat, w, out)
    return out.reshape((flat.shape[0], *spatial))


def elementwise_channel_sum(acts: ArrayLike, grads: ArrayLike) -> NDArray[np.float32]:
    """ReLU of the channel sum of ``acts * grads``: ``(N, C, *spatial) x2 -> (N, *spatial)``.

    ``raw[n] = max(0, sum_c acts[n, c] * grads[n, c])`` (HiResCAM). NaN propagates.
    """
    flat, spatial = _flat_acts(acts, "acts")
    g = as_f32(grads)
    acts_shape = (*flat.shape[:2], *spatial)
    if g.shape != acts_shape:
        raise ValueError(f"grads shape {g.shape} must equal acts shape {acts_shape}")
    out = np.empty((flat.shape[0], flat.shape[2]), dtype=np.float32)
    with threads_for(flat.size):
        _elementwise_sum_kernel(flat, g.reshape(flat.shape), out)
    return out.reshape((flat.shape[0], *spatial))


def spatial_mean(x: ArrayLike) -> NDArray[np.float32]:
    """Mean over all spatial axes: ``(N, C, *spatial) -> (N, C)``, accumulated in float64."""
    flat, _ = _flat_acts(x, "x")
    out = np.empty(flat.shape[:2], dtype=np.float32)
    with threads_for(flat.size):
        _spatial_mean_kernel(flat, out)
    return out
