"""Inputs checked against the model: shapes, layouts, dtypes, token ids, padding, masks."""

from __future__ import annotations

import numpy as np

from . import numerics
from .errors import InputError
from .model import Model


def check_input(model: Model, x, nonfinite: str = "raise") -> np.ndarray:
    """The input checked against the model's, as (N, C, *spatial) (see Model.graph).
    nonfinite="flag" lets items with NaN / Inf through (explain() flags their rows)."""
    if nonfinite not in ("raise", "flag"):
        raise InputError(f"nonfinite={nonfinite!r} is not 'raise' or 'flag'.")
    if model.tokens:
        return check_tokens(model, x)
    try:
        x = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(f"The input cannot be read as a float32 array ({exc}).") from None
    if model.raw_signal and x.ndim == 2:
        x = x[:, None]  # (N, T) samples: the one-channel signal (N, 1, T)
    expected, channel_axis = model.input_shape, model.channel_axis
    layouts = ({3: "(N, T, C)", 4: "(N, H, W, C)", 5: "(N, D, H, W, C)"}
               if model.channels_last else
               {3: "(N, C, T)", 4: "(N, C, H, W)", 5: "(N, C, D, H, W)"})
    if x.ndim != len(expected):
        hint = " Add a batch axis: x[None]." if x.ndim == len(expected) - 1 else ""
        raise InputError(f"The model takes {layouts[len(expected)]} inputs of rank "
                         f"{len(expected)}; got shape {x.shape}.{hint}")
    if len(x) == 0:
        raise InputError("The input holds no items (batch axis of size 0).")
    for axis, (want, got) in enumerate(zip(expected[1:], x.shape[1:]), start=1):
        if want is not None and want != got:
            what = "channels" if axis == channel_axis else f"size along axis {axis}"
            raise InputError(f"The model takes {want} {what}; the input has {got} "
                             f"(input shape {x.shape}, model input {expected})."
                             f"{_layout_hint(model, x.shape)}")
    bad = np.flatnonzero(numerics.nonfinite_rows(x)) if nonfinite == "raise" else []
    if len(bad):
        raise InputError(f"Items {bad.tolist()[:20]} contain NaN or Inf; clean or drop "
                         "them before explaining, or pass nonfinite='flag' to get their "
                         "rows flagged instead.")
    if channel_axis != 1:
        x = np.ascontiguousarray(np.moveaxis(x, channel_axis, 1))
    return x


def check_tokens(model: Model, x) -> np.ndarray:
    """Token ids checked against the model's (N, T) input, in its integer dtype."""
    try:
        ids = np.asarray(x)
    except ValueError:
        ids = None
    if ids is None or ids.dtype == object:
        raise InputError("The token sequences have different lengths; pass pad_id= to pad "
                         "them to one length (padding is left out of the maps).")
    if ids.dtype.kind == "f" and np.isfinite(ids).all() and (ids == np.round(ids)).all():
        ids = ids.astype(np.int64)
    if ids.dtype.kind not in "iu":
        raise InputError(f"The model takes integer token ids; got {ids.dtype} values.")
    if ids.ndim != 2 or len(ids) == 0:
        hint = " Add a batch axis: x[None]." if ids.ndim == 1 else ""
        raise InputError(f"The model takes token ids shaped (N, T); got {ids.shape}.{hint}")
    length = model.input_shape[1]
    if length is not None and ids.shape[1] != length:
        raise InputError(f"The model takes sequences of {length} tokens; got "
                         f"{ids.shape[1]}. Pad (pad_id=) or cut them to {length}.")
    return np.ascontiguousarray(ids, dtype=model.input_dtype)


def pad_sequences(model: Model, x, pad_id: int | None):
    """A list of token sequences of different lengths, padded with pad_id to one length
    (the model's, when fixed)."""
    if pad_id is None or not model.tokens or isinstance(x, np.ndarray):
        return x
    seqs = [np.asarray(seq).reshape(-1) for seq in x]
    length = model.input_shape[1] or max(len(seq) for seq in seqs)
    if any(len(seq) > length for seq in seqs):
        raise InputError(f"A sequence is longer than the model's {length} tokens; cut it.")
    out = np.full((len(seqs), length), pad_id, np.int64)
    for row, seq in zip(out, seqs):
        row[:len(seq)] = seq
    return out


def valid_positions(model: Model, x: np.ndarray, spatial: tuple, pad_id, mask):
    """(N, *spatial) bool: the positions the maps cover (None: all of them)."""
    if mask is not None:
        valid = np.asarray(mask, bool)
        if valid.shape != (len(x), *spatial):
            raise InputError(f"mask must be shaped (N, *input_spatial) = "
                             f"{(len(x), *spatial)}; got {valid.shape}.")
        return valid
    if pad_id is not None:
        if not model.tokens:
            raise InputError("pad_id= is for models taking token ids; give mask= to leave "
                             "padded positions of other inputs out of the maps.")
        return x != pad_id
    return None


def _layout_hint(model: Model, shape: tuple) -> str:
    """A hint when the input would fit with its channel axis moved to the other end."""
    if model.channels_last:
        moved, wanted, fix = (shape[0], *shape[2:], shape[1]), "channels-last", "1, -1"
    else:
        moved, wanted, fix = (shape[0], shape[-1], *shape[1:-1]), "channels-first", "-1, 1"
    if all(w is None or w == g for w, g in zip(model.input_shape[1:], moved[1:])):
        return (f" The input looks like the other layout; the model takes {wanted} "
                f"inputs: pass np.moveaxis(x, {fix}).")
    return ""
