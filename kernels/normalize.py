"""Per-item min-max normalisation to [0, 1].

Maps are processed as rows (the last axis) so that the work splits across threads even for a
single item. Row statistics are reduced to one ``(min, max)`` per item, then each row is
normalised in place. The resize kernel produces the same row statistics, which is how
``resize_normalize`` fuses the two steps.

Conventions: an item whose ``max - min`` is 0 becomes all zeros; an item containing NaN keeps
NaN (its whole map and its score range are NaN, as the formula ``(x - min) / (max - min)`` gives
with NaN-propagating min/max); other items are unaffected.
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._common import check_spatial, threads_for


@numba.njit(cache=True, inline="always")
def min_max(row):
    """(min, max) of a row; both NaN if it holds a NaN."""
    mn = np.float32(np.inf)
    mx = np.float32(-np.inf)
    has_nan = False
    for v in row:
        mn = min(mn, v)
        mx = max(mx, v)
        has_nan |= v != v
    if has_nan:
        return np.float32(np.nan), np.float32(np.nan)
    return mn, mx


@numba.njit(cache=True, parallel=True)
def row_stats(rows, row_min, row_max):
    """Per-row min and max; a row containing NaN gets NaN for both."""
    for r in numba.prange(rows.shape[0]):
        row_min[r], row_max[r] = min_max(rows[r])


@numba.njit(cache=True, parallel=True)
def finalize_inplace(rows, rows_per_item, row_min, row_max, ranges):
    """Reduce row stats to per-item ``ranges[n] = (min, max)``, then normalise rows in place.

    ``rows`` is ``(N * rows_per_item, L)``; rows of item ``n`` are contiguous.
    """
    n_items = ranges.shape[0]
    length = rows.shape[1]
    nan = np.float32(np.nan)
    zero = np.float32(0.0)
    for n in range(n_items):
        mn = np.float32(np.inf)
        mx = np.float32(-np.inf)
        has_nan = False
        for r in range(n * rows_per_item, (n + 1) * rows_per_item):
            a = row_min[r]
            b = row_max[r]
            if a != a or b != b:
                has_nan = True
            if a < mn:
                mn = a
            if b > mx:
                mx = b
        if has_nan:
            mn = nan
            mx = nan
        ranges[n, 0] = mn
        ranges[n, 1] = mx
    for r in numba.prange(n_items * rows_per_item):
        n = r // rows_per_item
        mn = ranges[n, 0]
        span = ranges[n, 1] - mn
        if span > zero:
            for i in range(length):
                rows[r, i] = (rows[r, i] - mn) / span
        elif span != span:
            for i in range(length):
                rows[r, i] = nan
        else:
            for i in range(length):
                rows[r, i] = zero


def normalize_minmax(maps: ArrayLike) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Min-max normalise each item of ``maps`` (shape ``(N, *spatial)``) to [0, 1].

    Returns ``(normalized, score_ranges)``: a new float32 array of the same shape, and the
    ``(N, 2)`` float32 per-item ``(min, max)`` before normalisation. Constant items become zeros;
    items containing NaN become all NaN with a NaN score range. The input is not modified.
    """
    out = np.array(maps, dtype=np.float32, copy=True, order="C")
    check_spatial(out, "maps", leading=1)
    n_items = out.shape[0]
    if n_items == 0:
        return out, np.empty((0, 2), dtype=np.float32)
    rows = out.reshape(-1, out.shape[-1])
    rows_per_item = rows.shape[0] // n_items
    row_min = np.empty(rows.shape[0], dtype=np.float32)
    row_max = np.empty(rows.shape[0], dtype=np.float32)
    ranges = np.empty((n_items, 2), dtype=np.float32)
    with threads_for(rows.size):
        row_stats(rows, row_min, row_max)
        finalize_inplace(rows, rows_per_item, row_min, row_max, ranges)
    return out, ranges
