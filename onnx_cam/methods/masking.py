"""Shared pieces of the input-perturbation methods: per-axis settings and baselines."""

from __future__ import annotations

import numpy as np

from ..errors import MethodError


def per_axis(value, spatial: tuple[int, ...], what: str) -> tuple[int, ...]:
    """An int for every spatial axis, or a tuple of one int per axis, as a checked tuple."""
    values = (value,) * len(spatial) if np.isscalar(value) else tuple(value)
    if len(values) != len(spatial) or any(int(v) != v or v < 1 for v in values):
        raise MethodError(f"{what} must be a positive int or one per spatial axis "
                          f"({len(spatial)} for inputs of spatial shape {spatial}); got {value!r}.")
    return tuple(int(v) for v in values)


def default_window(spatial: tuple[int, ...]) -> tuple[int, ...]:
    """An eighth of each spatial axis (at least 1): the window when none is given."""
    return tuple(max(1, s // 8) for s in spatial)


def baseline_like(baseline, inputs: np.ndarray) -> np.ndarray:
    """The values that replace removed inputs, shaped like `inputs` (n, C, *spatial).

    baseline: a number; an array shaped like one item (C, *spatial), used for every row; an
    array shaped like the rows given (n, C, *spatial); or a callable inputs -> such an array
    (e.g. a blur).
    """
    values = baseline(inputs) if callable(baseline) else baseline
    values = np.asarray(values, np.float32)
    if values.ndim == 0 or values.shape in (inputs.shape[1:], inputs.shape):
        return np.broadcast_to(values, inputs.shape)
    raise MethodError(f"The baseline must be a number, an array shaped like one item "
                      f"{inputs.shape[1:]} or like the rows explained {inputs.shape}; got "
                      f"shape {values.shape}.")
