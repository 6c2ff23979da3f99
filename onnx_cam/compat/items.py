"""SignalGrad-CAM's inputs as model batches: transform, pad, add the channel axis, group.

SignalGrad-CAM takes a list of items of possibly different shapes, applies ``transform_fn``
to each, zero-pads them along the time axis to ``padding_dim`` when asked, adds a leading
channel axis when the item has none, and stacks them into one batch (items of different
shapes are ``np.resize``-d to the first one's shape, repeating or dropping data). Here items of
equal shapes are batched together instead, so every item is explained as it is.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError


def to_numpy(value) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor, a TensorFlow tensor or a list."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):  # tf.Tensor
        return np.asarray(value.numpy())
    return np.asarray(value)


def as_list(value) -> list:
    """SignalGrad-CAM's convention: anything but a list is a single entry."""
    return value if isinstance(value, list) else [value]


@dataclass(frozen=True)
class Layout:
    """How items become model inputs (the builder's constructor arguments)."""

    rank: int                   # spatial rank of the explained layers: 1, 2 or 3
    time_axis: int              # time_axs
    padding_dim: int | None
    ignore_channel_dim: bool
    transformer: bool           # is_transformer_network: items carry their own batch axis


def prepare(items: Sequence, transform: Callable | None, extra_args: Sequence | None,
            layout: Layout) -> list[np.ndarray]:
    """Each item as the model takes it, without the batch axis, float or integer as given.

    An item whose rank equals the layers' spatial rank has no channel axis; SignalGrad-CAM
    adds one for 1D and 2D layers unless ``ignore_channel_dim``. Where the model itself takes
    no channel axis, :func:`with_unit_channel` adds a unit one to the batch and the model is
    wrapped to drop it, so that onnx-cam always sees (N, C, *spatial).
    """
    if extra_args is not None and len(extra_args) != len(items):
        raise InputError(f"extra_preprocess_inputs_list has {len(extra_args)} entries for "
                         f"{len(items)} items: give one list of extra arguments per item.")
    prepared = []
    for i, item in enumerate(items):
        if transform is not None:
            item = transform(item, *extra_args[i]) if extra_args is not None else transform(item)
        array = to_numpy(item)
        if layout.padding_dim is not None:
            array = _pad(array, layout.padding_dim, layout.time_axis, i)
        if not layout.ignore_channel_dim and array.ndim == layout.rank and layout.rank < 3:
            array = array[None]  # SignalGrad-CAM's own channel axis
        if layout.transformer:
            if array.ndim < 1 or array.shape[0] != 1:
                raise InputError(f"Item {i} has shape {array.shape}; with "
                                 "is_transformer_network=True each item carries a batch axis "
                                 "of 1, e.g. token ids shaped (1, T).")
            array = array[0]
        prepared.append(array)
    return prepared


def needs_unit_channel(shape: tuple[int, ...], rank: int) -> bool:
    """The model takes items of this shape without a channel axis."""
    return len(shape) == rank


def with_unit_channel(batch: np.ndarray, rank: int) -> np.ndarray:
    """The batch with a unit channel axis (axis 1) where the model takes none."""
    return batch[:, None] if needs_unit_channel(batch.shape[1:], rank) else batch


def group_by_shape(arrays: Sequence[np.ndarray]) -> dict[tuple[int, ...], list[int]]:
    """Item indices by shape, in first-seen order (one batch per shape)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, array in enumerate(arrays):
        groups.setdefault(array.shape, []).append(i)
    return groups


def _pad(array: np.ndarray, length: int, axis: int, index: int) -> np.ndarray:
    """Zeros appended along ``axis`` up to ``length`` (SignalGrad-CAM's padding_dim)."""
    if not -array.ndim <= axis < array.ndim:
        raise InputError(f"time_axs={axis} but item {index} has shape {array.shape}.")
    short = length - array.shape[axis]
    if short < 0:
        raise InputError(f"Item {index} has {array.shape[axis]} samples along time_axs={axis}, "
                         f"more than padding_dim={length}: raise padding_dim.")
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, short)
    return np.pad(array, widths)
