"""SignalGrad-CAM's maps from activations and gradients: signed maps, 0-255 scaling, sizes.

SignalGrad-CAM 2.2.0 returns, per item, the map at the layer's resolution min-max scaled to
0..255 and cast to ``uint8`` (truncating), *then* resized to the input's size: 1D and 2D maps
bilinearly (OpenCV, ``uint8`` out, rounded), 3D maps trilinearly (torch, ``float32`` out).
Its score range is the (min, max) of the map before scaling, at the layer's resolution.
"""

from __future__ import annotations

import numpy as np

from .. import kernels

METHODS = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM"}


def signed_maps(method: str, activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """(n, *spatial) maps before the final ReLU: Grad-CAM's gradient-mean-weighted channel sum
    or HiResCAM's channel sum of gradient x activation. Both are linear in the gradient, so a
    score's map is the same combination of the maps of its parts."""
    if method == "gradcam":
        return np.einsum("nc,nc...->n...", kernels.spatial_mean(gradients), activations)
    return np.einsum("nc...,nc...->n...", activations, gradients)


def to_bytes(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per item: the map min-max scaled to 0..255 as uint8 (truncated, as SignalGrad-CAM), and
    its minimum and maximum (n,). A constant map becomes all 0, or all 255 when its value is
    exactly 1 (SignalGrad-CAM's rule)."""
    maps = maps.astype(np.float32, copy=False)
    flat = maps.reshape(len(maps), -1)
    low, high = flat.min(axis=1), flat.max(axis=1)
    constant = low == high
    span = np.where(constant, np.float32(1), high - low)
    scaled = (flat - low[:, None]) / span[:, None]
    scaled[constant] = np.where(high[constant] == 1, np.float32(1), np.float32(0))[:, None]
    return (np.float32(255) * scaled).astype(np.uint8).reshape(maps.shape), low, high


def output_shape(rank: int, data_shape: tuple[int, ...], time_axis: int,
                 transposed: bool) -> tuple[tuple[int, ...], bool]:
    """The size SignalGrad-CAM gives a map of an item of ``data_shape`` (before transform_fn),
    and whether the layer's last two axes are swapped relative to it (``input_transposed``).

    1D: the item's length along ``time_axs`` (a 1-axis item: its length); 2D: its first two
    axes (rows x columns); 3D: its length along ``time_axs``, then axes 2 and 3 of a 4D item
    (1 and 2 of a 3D one).
    """
    if rank == 1:
        return (data_shape[time_axis if len(data_shape) > 1 else 0],), False
    if rank == 2:
        return (data_shape[0], data_shape[1]), transposed
    first = 2 if len(data_shape) >= 4 else 1
    return (data_shape[time_axis], data_shape[first], data_shape[first + 1]), transposed


def fit(byte_maps: np.ndarray, size: tuple[int, ...], transposed: bool,
        crop: tuple[int, ...] | None = None) -> np.ndarray:
    """Resize (n, *layer_spatial) 0..255 maps to ``size`` as SignalGrad-CAM does; ``crop`` keeps
    the leading part of each axis (the real samples of padded items).

    Linear, half-pixel (``align_corners=False``), edges clamped; 1D and 2D maps are rounded to
    uint8 (1D maps shaped (T, 1), as SignalGrad-CAM returns them), 3D maps stay float32.
    """
    target = (*size[:-2], size[-1], size[-2]) if transposed else size
    out = kernels.resize(byte_maps.astype(np.float32), target)
    if transposed:
        out = np.swapaxes(out, -1, -2)
    if crop is not None:
        out = out[(slice(None), *(slice(0, c) for c in crop))]
    if len(size) == 3:
        return out
    out = np.floor(out + 0.5).astype(np.uint8)
    return out[..., None] if len(size) == 1 else out
