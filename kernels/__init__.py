"""Numba kernels for class-activation maps on 1D, 2D and 3D feature maps (float32).

Public API (all inputs are cast to C-contiguous float32; shapes are validated and a
``ValueError`` explains any mismatch):

- :func:`weighted_channel_sum` -- ``ReLU(sum_c w[n, c] * acts[n, c])`` (Grad-CAM family).
- :func:`elementwise_channel_sum` -- ``ReLU(sum_c acts * grads)`` (HiResCAM).
- :func:`spatial_mean` -- mean over spatial axes, ``(N, C, *spatial) -> (N, C)``.
- :func:`resize` -- (bi/tri)linear resize matching ``F.interpolate(align_corners=False)``.
- :func:`normalize_minmax` -- per-item min-max normalisation to [0, 1] plus score ranges.
- :func:`resize_normalize` -- fused resize + min-max normalisation (what explainers call).
- :func:`colorize` / :func:`overlay` -- matplotlib colormap lookup and alpha blending (uint8).
"""

from .colormap import colorize, colormap_lut, overlay
from .interpolate import resize, resize_normalize
from .normalize import normalize_minmax
from .reduce import elementwise_channel_sum, spatial_mean, weighted_channel_sum

__all__ = [
    "colorize",
    "colormap_lut",
    "elementwise_channel_sum",
    "normalize_minmax",
    "overlay",
    "resize",
    "resize_normalize",
    "spatial_mean",
    "weighted_channel_sum",
]
