"""Linear / bilinear / trilinear resizing with PyTorch's ``align_corners=False`` convention.

One kernel serves 1D, 2D and 3D: spatial shapes are left-padded with size-1 axes to
``(D, H, W)``. Per-axis source-index and weight tables are computed once per call (small
arrays), then a single parallel loop over output rows ``(n, d, h)`` writes the output and
records each row's min and max (used by :func:`resize_normalize`).

Arithmetic follows ``torch.nn.functional.interpolate`` on CPU in float32: ``scale = in / out``,
``src = max(scale * (dst + 0.5) - 0.5, 0)`` (multiply-subtract rounded once, like PyTorch's
FMA kernels), ``i0 = floor(src)``, ``i1 = min(i0 + 1, in - 1)``, ``lambda = src - i0``; taps
are combined innermost axis (W) first, in plain float32 (results agree with PyTorch to a few
ulp). A tap whose weight is exactly 0 is skipped (this is what makes the padded axes free), so
a NaN or inf neighbour that gets weight 0 does not leak into the output, unlike in PyTorch.
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._common import as_f32, check_spatial, normalize_out_shape, pad3
from .normalize import finalize_inplace


def _axis_table(in_size: int, out_size: int, length: int) -> tuple[NDArray, NDArray]:
    """Source indices ``(2, length)`` int64 and weights ``(2, length)`` float32 for one axis."""
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    dst = np.arange(out_size, dtype=f32) + f32(0.5)
    # One rounding after multiply-subtract, as PyTorch's (FMA-contracted) AVX2 CPU kernels do;
    # the product of two float32 values is exact in float64.
    src = (np.float64(scale) * dst.astype(np.float64) - 0.5).astype(f32)
    src = np.maximum(src, f32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = np.clip(src - i0.astype(f32), f32(0.0), f32(1.0))
    idx = np.zeros((2, length), dtype=np.int64)
    wts = np.zeros((2, length), dtype=f32)
    idx[0, :out_size] = i0
    idx[1, :out_size] = i1
    wts[0, :out_size] = f32(1.0) - lam
    wts[1, :out_size] = lam
    return idx, wts


def _tables(in3: tuple[int, ...], out3: tuple[int, ...]) -> tuple[NDArray, NDArray]:
    """Stacked tables: ``idx[axis, tap, o]`` int64 and ``wts[axis, tap, o]`` float32."""
    length = max(out3)
    pairs = [_axis_table(i, o, length) for i, o in zip(in3, out3, strict=True)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


@numba.njit(cache=True, inline="always")
def _lerp_hw(x, n, d, ha, hb, cha, chb, wa, wb, cwa, cwb):
    """Bilinear value in plane ``x[n, d]``: W taps first, then H taps; zero-weight taps skipped."""
    v = x[n, d, ha, wa] * cwa
    if cwb != 0:
        v += x[n, d, ha, wb] * cwb
    v *= cha
    if chb != 0:
        t = x[n, d, hb, wa] * cwa
        if cwb != 0:
            t += x[n, d, hb, wb] * cwb
        v += t * chb
    return v


@numba.njit(cache=True, parallel=True)
def _resize_kernel(x, idx, wts, out, row_min, row_max):
    """Resize ``x (N, Di, Hi, Wi)`` into ``out (N, Do, Ho, Wo)``; per-row min/max (NaN-aware)."""
    n_items, d_out, h_out, w_out = out.shape
    plane = d_out * h_out
    for r in numba.prange(n_items * plane):
        n = r // plane
        rem = r - n * plane
        od = rem // h_out
        oh = rem - od * h_out
        da = idx[0, 0, od]
        db = idx[0, 1, od]
        cda = wts[0, 0, od]
        cdb = wts[0, 1, od]
        ha = idx[1, 0, oh]
        hb = idx[1, 1, oh]
        cha = wts[1, 0, oh]
        chb = wts[1, 1, oh]
        mn = np.float32(np.inf)
        mx = np.float32(-np.inf)
        has_nan = False
        for ow in range(w_out):
            wa = idx[2, 0, ow]
            wb = idx[2, 1, ow]
            cwa = wts[2, 0, ow]
            cwb = wts[2, 1, ow]
            v = _lerp_hw(x, n, da, ha, hb, cha, chb, wa, wb, cwa, cwb) * cda
            if cdb != 0:
                v += _lerp_hw(x, n, db, ha, hb, cha, chb, wa, wb, cwa, cwb) * cdb
            out[n, od, oh, ow] = v
            if v < mn:
                mn = v
            if v > mx:
                mx = v
            if v != v:
                has_nan = True
        if has_nan:
            mn = np.float32(np.nan)
            mx = np.float32(np.nan)
        row_min[r] = mn
        row_max[r] = mx


def _resize_padded(
    raw: ArrayLike, out_shape: int | tuple[int, ...] | list[int]
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32], tuple[int, ...]]:
    """Run the kernel; returns padded output ``(N, Do, Ho, Wo)``, row min, row max, out shape."""
    x = as_f32(raw)
    spatial = check_spatial(x, "raw", leading=1)
    shape = normalize_out_shape(out_shape, len(spatial))
    in3, out3 = pad3(spatial), pad3(shape)
    idx, wts = _tables(in3, out3)
    n_items = x.shape[0]
    x3 = x.reshape((n_items, *in3))
    out = np.empty((n_items, *out3), dtype=np.float32)
    n_rows = n_items * out3[0] * out3[1]
    row_min = np.empty(n_rows, dtype=np.float32)
    row_max = np.empty(n_rows, dtype=np.float32)
    _resize_kernel(x3, idx, wts, out, row_min, row_max)
    return out, row_min, row_max, shape


def resize(raw: ArrayLike, out_shape: int | tuple[int, ...] | list[int]) -> NDArray[np.float32]:
    """Resize ``(N, *spatial) -> (N, *out_shape)`` (1 to 3 spatial axes).

    Same result as ``F.interpolate(x[:, None], size=out_shape, mode="linear" | "bilinear" |
    "trilinear", align_corners=False)[:, 0]``.
    """
    out, _, _, shape = _resize_padded(raw, out_shape)
    return out.reshape((out.shape[0], *shape))


def resize_normalize(
    raw: ArrayLike, out_shape: int | tuple[int, ...] | list[int]
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Resize like :func:`resize`, then min-max normalise each item to [0, 1].

    Returns ``(cams, score_ranges)`` with ``cams`` of shape ``(N, *out_shape)`` and
    ``score_ranges`` ``(N, 2)`` = per-item ``(min, max)`` of the resized map before
    normalisation. Min/max are tracked while resizing, then one in-place pass normalises.
    Constant items become zeros; items containing NaN become all NaN with NaN score ranges.
    """
    out, row_min, row_max, shape = _resize_padded(raw, out_shape)
    n_items = out.shape[0]
    ranges = np.empty((n_items, 2), dtype=np.float32)
    if n_items:
        rows = out.reshape(-1, out.shape[-1])
        finalize_inplace(rows, rows.shape[0] // n_items, row_min, row_max, ranges)
    return out.reshape((n_items, *shape)), ranges
