"""Per-row numerical health of an explanation: NaN / Inf and all-zero gradients, as flags.

Each row of an Explanation gets a ``RowFlag`` bit mask (``Explanation.flags``, uint8). A row
whose activations or gradients at a layer are not finite gets NaN maps for that layer, never
zeros; a row whose gradient at a layer is all zero (a dead or saturated layer) gets an
all-zero map and a ``ZeroGradientWarning``.
"""

from __future__ import annotations

import enum
import warnings

import numpy as np


class RowFlag(enum.IntFlag):
    """What went wrong numerically in one row (several may be set)."""

    INPUT_NONFINITE = 1       # the input item holds NaN or Inf
    SCORE_NONFINITE = 2       # the model's scores (logits) for the item are NaN or Inf
    ACTIVATION_NONFINITE = 4  # a layer's activations hold NaN or Inf
    GRADIENT_NONFINITE = 8    # the score's gradient at a layer holds NaN or Inf
    ZERO_GRADIENT = 16        # the score's gradient at a layer is zero everywhere
    MAP_NONFINITE = 32        # a method gave a map with NaN or Inf from finite values
    CONSTANT_MAP = 64         # a map is constant (all zero once scaled): nothing to show
    NEAR_TIE = 128            # a gradient route is decided within rounding (check_ties)


REASONS = {
    RowFlag.INPUT_NONFINITE: "the input item holds NaN or Inf",
    RowFlag.SCORE_NONFINITE: "the model's scores for the item are NaN or Inf",
    RowFlag.ACTIVATION_NONFINITE: "a layer's activations hold NaN or Inf (its maps are NaN)",
    RowFlag.GRADIENT_NONFINITE: "the score's gradient at a layer holds NaN or Inf (its maps "
                                "are NaN)",
    RowFlag.ZERO_GRADIENT: "the score's gradient at a layer is zero everywhere (a dead or "
                           "saturated layer): its gradient maps are all zero",
    RowFlag.MAP_NONFINITE: "a method's map holds NaN or Inf",
    RowFlag.CONSTANT_MAP: "a map is constant, so it is all zero once scaled to [0, 1]",
    RowFlag.NEAR_TIE: "a ReLU sign or max winner on the gradient's path is decided within "
                      "float32 rounding: another correct forward may route the gradient "
                      "elsewhere (see check_ties)",
}


class NumericsWarning(UserWarning):
    """Some rows of an explanation hold NaN / Inf values; see Explanation.flags."""


class ZeroGradientWarning(NumericsWarning):
    """The score's gradient at a layer is zero for some rows: their maps are all zero."""


def flag_where(mask: np.ndarray, flag: RowFlag) -> np.ndarray:
    """(n,) uint8: `flag` where `mask` is True, else 0."""
    return np.where(mask, np.uint8(flag), np.uint8(0))


def describe_flags(flags: int) -> list[str]:
    """The reasons, in words, that a row's flags stand for (empty for 0)."""
    return [REASONS[flag] for flag in RowFlag if int(flags) & flag]


def nonfinite_rows(values: np.ndarray) -> np.ndarray:
    """(n,) True where row i of `values` (n, ...) holds NaN or Inf, without a full-size
    temporary: min and max propagate NaN and reach any infinity."""
    low, high = _row_min_max(values)
    return ~(np.isfinite(low) & np.isfinite(high))


def _row_min_max(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = values.reshape(len(values), -1)
    if flat.shape[1] == 0:
        return np.zeros(len(flat)), np.zeros(len(flat))
    return flat.min(axis=1), flat.max(axis=1)


def layer_flags(activations: np.ndarray, gradients: np.ndarray | None) -> np.ndarray:
    """(n,) uint8 flags of one layer's activations and gradients (None: not computed)."""
    flags = flag_where(nonfinite_rows(activations), RowFlag.ACTIVATION_NONFINITE)
    if gradients is not None:
        low, high = _row_min_max(gradients)
        flags |= flag_where(~(np.isfinite(low) & np.isfinite(high)), RowFlag.GRADIENT_NONFINITE)
        flags |= flag_where((low == 0) & (high == 0), RowFlag.ZERO_GRADIENT)
    return flags


def settle_maps(raw: np.ndarray, cam: np.ndarray, ranges: np.ndarray, flags: np.ndarray,
                uses_gradients: bool) -> np.ndarray:
    """Make one method's maps of a batch say what happened, in place; returns the flags the
    maps themselves add (MAP_NONFINITE, CONSTANT_MAP).

    Rows with non-finite values behind the map (input, activations, or gradients when the
    method uses them) get NaN maps and score ranges; rows whose gradient is zero everywhere
    get all-zero maps and ranges from a gradient method, whatever its formula would divide.
    """
    invalid = RowFlag.INPUT_NONFINITE | RowFlag.ACTIVATION_NONFINITE
    if uses_gradients:
        invalid |= RowFlag.GRADIENT_NONFINITE
    nan_rows = (flags & invalid) != 0
    zero_rows = np.zeros(len(flags), bool)
    if uses_gradients:
        zero_rows = ~nan_rows & ((flags & RowFlag.ZERO_GRADIENT) != 0)
    for values in (raw, cam, ranges):
        values[zero_rows] = 0
        values[nan_rows] = np.nan
    return (flag_where(~nan_rows & nonfinite_rows(ranges), RowFlag.MAP_NONFINITE)
            | flag_where(ranges[:, 0] == ranges[:, 1], RowFlag.CONSTANT_MAP))


def warn_flagged(flags: np.ndarray, zero_gradient_layers: list[str], stacklevel: int = 3):
    """One warning per kind of problem found in an explain call."""
    bad = RowFlag.INPUT_NONFINITE | RowFlag.SCORE_NONFINITE | RowFlag.ACTIVATION_NONFINITE \
        | RowFlag.GRADIENT_NONFINITE | RowFlag.MAP_NONFINITE
    rows = np.flatnonzero(flags & bad)
    if len(rows):
        warnings.warn(f"Rows {_listed(rows)} hold NaN or Inf values; their maps are NaN where "
                      "the values were. See Explanation.flags / flag_reasons(row).",
                      NumericsWarning, stacklevel=stacklevel)
    rows = np.flatnonzero(flags & RowFlag.ZERO_GRADIENT)
    if len(rows):
        warnings.warn(f"The score's gradient is zero everywhere at layer(s) "
                      f"{sorted(set(zero_gradient_layers))} for rows {_listed(rows)}: a dead or "
                      "saturated layer (ReLUs that are all off, or score='probs' on a confident "
                      "item), or a foil equal to its target. Their gradient maps are all zero; "
                      "try score='logits' or another layer.", ZeroGradientWarning,
                      stacklevel=stacklevel)
    rows = np.flatnonzero(flags & RowFlag.NEAR_TIE)
    if len(rows):
        warnings.warn(f"Rows {_listed(rows)} route the gradient through a comparison decided "
                      "within float32 rounding (a ReLU sign or a max winner): another correct "
                      "forward, such as torch's, may give a different map there. "
                      "RuntimeOptions(exact_routes=True) keeps the rounding of the unfused ops "
                      "where ONNX Runtime's fusions change it.", NumericsWarning,
                      stacklevel=stacklevel)


def _listed(rows: np.ndarray, shown: int = 20) -> str:
    more = f" and {len(rows) - shown} more" if len(rows) > shown else ""
    return f"{rows[:shown].tolist()}{more}"
