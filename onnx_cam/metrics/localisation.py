"""Localisation against ground-truth masks: how much of a map's relevance falls where the
evidence is known to be (1D intervals, 2D masks, 3D volumes; no model run).

Every metric reads one map and one boolean mask per row, both flattened over the spatial
axes, so signals, images and volumes share each formula. A row whose mask is empty gets NaN
(nothing to localise), and so does AUC with a mask covering every position.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from .options import MetricError
from .relevance import relevance

EPS = 1e-9  # Quantus' guard in Attribution Localisation and Focus


def row_masks(masks, items: np.ndarray, items_total: int,
              spatial: tuple[int, ...]) -> np.ndarray:
    """The ground-truth mask of each row, (rows, positions) bool, from `masks` given per input
    item (N, *input_spatial)."""
    if masks is None:
        raise MetricError("Localisation metrics need ground-truth masks: pass masks= (N, "
                          "*input_spatial) bool, True where the evidence is, one per input item.")
    masks = np.asarray(masks)
    if masks.shape != (items_total, *spatial):
        raise MetricError(f"masks= must be (N, *input_spatial) = {(items_total, *spatial)}, one "
                          f"per input item; got shape {masks.shape}.")
    if masks.dtype != bool and not np.isin(masks, (0, 1)).all():
        raise MetricError("masks= must be boolean (or 0 / 1): True where the evidence is.")
    return masks.astype(bool).reshape(items_total, -1)[items]


def _top(maps: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(rows, positions) bool: each row's counts[row] highest positions (ties: lower first)."""
    order = np.argsort(-maps, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(maps.shape[1])[None], axis=1)
    return rank < counts[:, None]


def pointing_game(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """1 if a position of the map's maximum (any, when tied) lies in the mask, else 0."""
    hit = (maps == maps.max(axis=1, keepdims=True)) & masks
    return hit.any(axis=1).astype(np.float64)


def attribution_localisation(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """sum |map| inside / (sum |map| + 1e-9) (Kohlbrenner et al. 2020; Quantus' abs=True)."""
    a = np.abs(maps)
    return (a * masks).sum(1) / (a.sum(1) + EPS)


def top_k_intersection(maps: np.ndarray, masks: np.ndarray, k: int) -> np.ndarray:
    """Fraction of the k highest positions that lie in the mask (Theiner et al. 2021)."""
    return (_top(maps, np.full(len(maps), k)) & masks).sum(1) / k


def relevance_mass_accuracy(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """sum map inside / sum map (Arras et al. 2022), signed as it is."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (maps * masks).sum(1) / maps.sum(1)


def relevance_rank_accuracy(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Fraction of the |mask| highest positions that lie in the mask (Arras et al. 2022)."""
    size = masks.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (_top(maps, size) & masks).sum(1) / size


def auc(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Area under the ROC curve of the map as a score for the mask's positions: the chance a
    mask position outranks an outside one, ties counting half (the Mann-Whitney statistic,
    equal to scikit-learn's roc_curve + auc that Quantus calls)."""
    ranks = stats.rankdata(maps, axis=1)
    inside = masks.sum(1)
    outside = masks.shape[1] - inside
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (ranks * masks).sum(1) - inside * (inside + 1) / 2
        return np.where(outside > 0, u / (inside * outside), np.nan)


def focus(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Positive relevance inside / (positive relevance + 1e-9) (Arias-Duart et al. 2022):
    on a mosaic, the mask is the target class's tiles."""
    a = np.clip(maps, 0, None)
    return (a * masks).sum(1) / (a.sum(1) + EPS)


def energy_pointing_game(cams: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Energy inside / total energy of the map as drawn (`cam`, in [0, 1]), Wang et al.'s
    (Score-CAM, 2020) energy-based pointing game."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (cams * masks).sum(1) / cams.sum(1)


def top_k_count(top_k: float, positions: int) -> int:
    """top_k as a number of positions: an int is a count, a float in (0, 1) a fraction."""
    k = int(top_k) if isinstance(top_k, (int, np.integer)) else int(round(top_k * positions))
    if not 1 <= k <= positions:
        raise MetricError(f"top_k={top_k} means {k} positions, but a map has {positions}: give "
                          "a count in [1, positions] or a fraction in (0, 1).")
    return k


def localisation(maps: np.ndarray, cams: np.ndarray, masks: np.ndarray,
                 top_k: float) -> dict[str, np.ndarray]:
    """Every localisation metric of the rows: maps are the relevance (rows, *spatial), cams
    the maps as drawn, masks (rows, positions) bool."""
    flat = maps.reshape(len(maps), -1)
    k = top_k_count(top_k, flat.shape[1])
    values = {
        "pointing_game": pointing_game(flat, masks),
        "attribution_localisation": attribution_localisation(flat, masks),
        "top_k_intersection": top_k_intersection(flat, masks, k),
        "relevance_mass_accuracy": relevance_mass_accuracy(flat, masks),
        "relevance_rank_accuracy": relevance_rank_accuracy(flat, masks),
        "auc": auc(flat, masks),
        "focus": focus(flat, masks),
        "energy_pointing_game": energy_pointing_game(cams.reshape(len(cams), -1), masks),
    }
    empty = ~masks.any(axis=1)
    for v in values.values():
        v[empty] = np.nan
    return values


def family(ctx, rows) -> dict[str, np.ndarray]:
    """Every localisation metric of the rows of an evaluate call (masks=, top_k=)."""
    masks = row_masks(ctx.options.masks, rows.items, len(rows.inputs), rows.inputs.shape[2:])
    maps = relevance(ctx.explanation, ctx.method, ctx.layer)[rows.ids]
    return localisation(maps, rows.maps.astype(np.float64), masks, ctx.options.top_k)


FAMILIES = dict.fromkeys(("pointing_game", "attribution_localisation", "top_k_intersection",
                          "relevance_mass_accuracy", "relevance_rank_accuracy", "auc", "focus",
                          "energy_pointing_game"), family)
