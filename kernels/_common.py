"""Shared validation and casting helpers for the public kernel wrappers."""

from __future__ import annotations

from contextlib import contextmanager

import numba
import numpy as np
from numpy.typing import ArrayLike, NDArray

#: Elements handled by one parallel job in the flattened (chunked) kernels. Numba freezes it
#: into the cached machine code: clear ``kernels/__pycache__/*.nb[ic]`` after changing it.
BLOCK = 4096

#: Below this many elements a kernel runs on the calling thread: waking the thread pool
#: (often sharing cores with ONNX Runtime's) costs more than the work.
SERIAL_BELOW = 4_000_000

MAX_SPATIAL_RANK = 3


@contextmanager
def threads_for(elements: int):
    """Run the numba kernels inside on one thread when the work is small.

    numba's thread count is per calling thread, so concurrent callers do not interfere.
    """
    if elements >= SERIAL_BELOW:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def as_f32(x: ArrayLike) -> NDArray[np.float32]:
    """Return ``x`` as a C-contiguous float32 array (no copy when already one)."""
    return np.asarray(x, dtype=np.float32, order="C")  # keeps 0-d (ascontiguousarray would not)


def check_spatial(x: NDArray, name: str, leading: int) -> tuple[int, ...]:
    """Check that ``x`` has ``leading`` batch/channel axes plus 1..3 spatial axes.

    Returns the spatial shape. Raises ``ValueError`` on a wrong rank or an empty spatial axis.
    """
    rank = x.ndim - leading
    if not 1 <= rank <= MAX_SPATIAL_RANK:
        axes = "(N, C, *spatial)" if leading == 2 else "(N, *spatial)"
        raise ValueError(
            f"{name} must have shape {axes} with 1 to {MAX_SPATIAL_RANK} spatial axes; "
            f"got shape {x.shape} ({rank} spatial axes)"
        )
    spatial = tuple(int(s) for s in x.shape[leading:])
    if min(spatial) == 0:
        raise ValueError(f"{name} has an empty spatial axis: shape {x.shape}")
    return spatial


def normalize_out_shape(out_shape: int | tuple[int, ...] | list[int], rank: int) -> tuple[int, ...]:
    """Validate an output spatial shape against the input spatial ``rank``."""
    shape = (out_shape,) if isinstance(out_shape, (int, np.integer)) else tuple(out_shape)
    if len(shape) != rank:
        raise ValueError(
            f"out_shape {shape} has {len(shape)} axes but the input has {rank} spatial axes"
        )
    if any(int(s) != s or int(s) < 1 for s in shape):
        raise ValueError(f"out_shape entries must be positive integers; got {shape}")
    return tuple(int(s) for s in shape)


def pad3(spatial: tuple[int, ...]) -> tuple[int, int, int]:
    """Left-pad a 1D/2D spatial shape with size-1 axes to three axes."""
    d, h, w = (1,) * (MAX_SPATIAL_RANK - len(spatial)) + tuple(spatial)
    return d, h, w
