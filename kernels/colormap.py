"""Colour mapping of CAMs and alpha blending over images.

A matplotlib colormap is sampled once into a 259-row RGBA uint8 lookup table: 256 colours,
then the colormap's "under", "over" and "bad" (NaN) colours, exactly as
``cmap(x, bytes=True)`` would give them. Values are quantised like matplotlib's
``Colormap.__call__`` for float input: ``i = int(v * 256)`` in float32 (truncation), with
``v == 1`` mapped to 255, ``v < 0`` to "under", ``v > 1`` to "over" and NaN to "bad".
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numba
import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._common import BLOCK, as_f32

if TYPE_CHECKING:
    from matplotlib.colors import Colormap

LUT_SIZE = 256
_UNDER, _OVER, _BAD = LUT_SIZE, LUT_SIZE + 1, LUT_SIZE + 2


def _build_lut(cmap: Colormap) -> NDArray[np.uint8]:
    if cmap.N != LUT_SIZE:
        cmap = cmap.resampled(LUT_SIZE)
    probes = np.array([-1.0, 2.0, np.nan], dtype=np.float32)
    lut = np.concatenate(
        [cmap(np.arange(LUT_SIZE), bytes=True), cmap(probes, bytes=True)], axis=0
    ).astype(np.uint8)
    lut.setflags(write=False)
    return lut


@lru_cache(maxsize=32)
def _named_lut(name: str) -> NDArray[np.uint8]:
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError as exc:
        raise ValueError(f"unknown matplotlib colormap {name!r}") from exc
    return _build_lut(cmap)


def colormap_lut(cmap: str | Colormap = "jet") -> NDArray[np.uint8]:
    """The ``(259, 4)`` RGBA uint8 lookup table (256 colours, under, over, bad) of ``cmap``.

    ``cmap`` is a matplotlib colormap name or a ``matplotlib.colors.Colormap``; colormaps with
    ``N != 256`` are resampled to 256 entries. Name lookups are cached.
    """
    if isinstance(cmap, str):
        return _named_lut(cmap)
    return _build_lut(cmap)


@numba.njit(cache=True, inline="always")
def _lut_index(v):
    """matplotlib's float -> LUT row rule, evaluated in float32."""
    x = v * np.float32(LUT_SIZE)
    if x != x:
        return _BAD
    if x == np.float32(LUT_SIZE):
        return LUT_SIZE - 1
    if x < np.float32(0.0):
        return _UNDER
    if x >= np.float32(LUT_SIZE):
        return _OVER
    return int(x)


@numba.njit(cache=True, parallel=True)
def _colorize_kernel(values, lut, out):
    """out[i] = lut[index(values[i]), :3] for flat ``values``; parallel over blocks."""
    size = values.shape[0]
    n_blocks = (size + BLOCK - 1) // BLOCK
    for b in numba.prange(n_blocks):
        for i in range(b * BLOCK, min((b + 1) * BLOCK, size)):
            k = _lut_index(values[i])
            out[i, 0] = lut[k, 0]
            out[i, 1] = lut[k, 1]
            out[i, 2] = lut[k, 2]


@numba.njit(cache=True, parallel=True)
def _overlay_kernel(values, image, scale, alpha, lut, out):
    """Blend ``lut[index(values[i])]`` over pixel ``image[i % len(image)]``.

    ``image`` is ``(M, 1 | 3)`` (uint8 or float32); ``pixel = clip(image * scale, 0, 255)``
    (NaN -> 0). The colour's weight is ``alpha * lut_alpha / 255`` and the result is
    ``floor((1 - a) * pixel + a * colour + 0.5)`` clipped to [0, 255], in float32.
    """
    size = values.shape[0]
    n_pix, n_ch = image.shape
    zero = np.float32(0.0)
    one = np.float32(1.0)
    top = np.float32(255.0)
    half = np.float32(0.5)
    n_blocks = (size + BLOCK - 1) // BLOCK
    for b in numba.prange(n_blocks):
        for i in range(b * BLOCK, min((b + 1) * BLOCK, size)):
            k = _lut_index(values[i])
            a = alpha * (np.float32(lut[k, 3]) / top)
            p = i % n_pix
            for c in range(3):
                g = np.float32(image[p, c if n_ch == 3 else 0]) * scale
                if not g > zero:  # also NaN
                    g = zero
                if g > top:
                    g = top
                y = np.floor((one - a) * g + a * np.float32(lut[k, c]) + half)
                if y > top:
                    y = top
                if y < zero:
                    y = zero
                out[i, c] = np.uint8(y)


def colorize(cams: ArrayLike, cmap: str | Colormap = "jet") -> NDArray[np.uint8]:
    """Map values in [0, 1] to RGB: any shape ``(...) -> (..., 3)`` uint8.

    Same colours as ``matplotlib.colormaps[cmap](cams.astype(float32), bytes=True)[..., :3]``
    (out-of-range values take the colormap's under/over colour, NaN its bad colour).
    """
    values = as_f32(cams)
    out = np.empty((values.size, 3), dtype=np.uint8)
    _colorize_kernel(values.reshape(-1), colormap_lut(cmap), out)
    return out.reshape((*values.shape, 3))


def _image_pixels(image: ArrayLike, cam_shape: tuple[int, ...]) -> tuple[NDArray, np.float32]:
    """Validate ``image`` against ``cam_shape``; return ``(M, 1 | 3)`` pixels and their scale."""
    img = np.asarray(image)
    if img.dtype == np.uint8:
        scale = np.float32(1.0)
    elif np.issubdtype(img.dtype, np.floating):
        img = img.astype(np.float32, copy=False)
        scale = np.float32(255.0)
    else:
        raise ValueError(f"image must be uint8, or float with values in [0, 1]; got {img.dtype}")

    def is_suffix(shape: tuple[int, ...]) -> bool:
        return len(shape) <= len(cam_shape) and cam_shape[len(cam_shape) - len(shape) :] == shape

    if img.shape == cam_shape:  # one grayscale image per map
        pixels = img.reshape(-1, 1)
    elif img.ndim >= 1 and img.shape[-1] in (1, 3, 4) and is_suffix(img.shape[:-1]):
        pixels = img[..., :3] if img.shape[-1] == 4 else img
        pixels = pixels.reshape(-1, pixels.shape[-1])
    elif is_suffix(img.shape):
        pixels = img.reshape(-1, 1)
    else:
        raise ValueError(
            f"image shape {img.shape} does not match cams shape {cam_shape}: expected "
            f"(..., *spatial, 1|3|4) or (..., *spatial) matching the trailing cams axes"
        )
    return np.asarray(pixels, order="C"), scale


def overlay(
    image: ArrayLike, cams: ArrayLike, alpha: float = 0.5, cmap: str | Colormap = "jet"
) -> NDArray[np.uint8]:
    """Alpha-blend the colour-mapped ``cams`` over ``image``; returns ``cams.shape + (3,)`` uint8.

    ``image`` is RGB ``(..., 3)`` (RGBA: alpha ignored), grayscale ``(...)`` or ``(..., 1)``,
    either uint8 or float in [0, 1] (clipped); its shape must match the trailing axes of
    ``cams`` (e.g. one ``(H, W, 3)`` image for ``(N, H, W)`` cams). An image of exactly the
    shape of ``cams`` is grayscale; otherwise a trailing axis of size 1, 3 or 4 that fits is
    read as channels (so give a shared grayscale image whose last axis has size 1, 3 or 4 an
    explicit ``(..., 1)`` channel axis). Per pixel, with ``c`` the colormap colour and
    ``a = alpha * c_alpha / 255`` (so NaN cams, whose "bad" colour is transparent, show the
    image): ``out = floor((1 - a) * pixel + a * c + 0.5)``.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    values = as_f32(cams)
    pixels, scale = _image_pixels(image, values.shape)
    out = np.empty((values.size, 3), dtype=np.uint8)
    _overlay_kernel(values.reshape(-1), pixels, scale, np.float32(alpha), colormap_lut(cmap), out)
    return out.reshape((*values.shape, 3))
