"""What Quantus-style metrics rank, group and remove: the features of a row's relevance.

A row's relevance is (K, *spatial): its signed input attribution (K = C channels, or 1 for
methods scoring a position at once) for input-level methods, its map (K = 1) for CAMs. A
feature is one of its K x positions elements: a position (all channels together) of a map,
an element (channel, position) of a per-channel attribution. Everything works on the
flattened features, so signals, images and volumes share one code path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from .options import MetricError
from .perturb import Perturbation
from .scoring import Rows, Scorer


def relevance(rows: Rows, absolute: bool, normalise: bool = True) -> np.ndarray:
    """(rows, K, *spatial) float64: the attribution if the rows have one, else the map;
    scaled per row by its largest |value| if `normalise` (Quantus' normalise_by_max, per
    row rather than per batch), |.| if `absolute`."""
    if rows.attributions is None:
        values = rows.maps[:, None].astype(np.float64)
    else:
        values = np.asarray(rows.attributions, np.float64)
        if values.ndim != rows.maps.ndim + 1:
            raise MetricError(f"The attribution is {values.shape[1:]} per row, not (channels, "
                              f"*{rows.maps.shape[1:]}): token inputs have no features to "
                              "remove.")
    if absolute:
        values = np.abs(values)
    if not normalise:
        return values
    scale = np.abs(values.reshape(len(values), -1)).max(axis=1)
    scale = np.where(scale > 0, scale, 1.0).reshape((-1,) + (1,) * (values.ndim - 1))
    return values / scale


def features_in_step(count: int, requested: int | None, step: float) -> int:
    """Features removed per step: as requested, else the `step` fraction of `count`."""
    if requested is None:
        return max(1, int(np.ceil(step * count - 1e-9)))
    if requested > count:
        raise MetricError(f"features_in_step={requested} exceeds the {count} features.")
    return requested


def step_of(order: np.ndarray, per_step: int) -> np.ndarray:
    """(F,) the step at which each feature comes: order[j * per_step: (j + 1) * per_step]
    come at step j."""
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank // per_step


def step_masks(step: np.ndarray, which: slice, cumulative: bool) -> np.ndarray:
    """(len(which), F) bool: the features of steps `which` (every one up to there when
    `cumulative`), built a chunk at a time so fine steps never hold steps x F at once."""
    steps = np.arange(which.start, which.stop)[:, None]
    return step[None] <= steps if cumulative else step[None] == steps


def descending(values: np.ndarray) -> np.ndarray:
    """Indices from the largest value; ties by lower index (stable)."""
    return np.argsort(-values, kind="stable")


def removed(perturbation: Perturbation, item: np.ndarray, masks: np.ndarray,
            rng: np.random.Generator | None = None) -> np.ndarray:
    """(M, C, *spatial): `item` with the features of each mask (M, K, *spatial) replaced."""
    if masks.shape[1] == 1:
        return perturbation.apply(item, masks[:, 0], rng)
    if perturbation.imputes:
        raise MetricError("baseline='interp' imputes whole positions; a per-channel "
                          "attribution removes single channels: choose another baseline.")
    return np.where(masks, perturbation.fill(item)[None], item[None])


def chunks(count: int, size: int) -> Iterator[slice]:
    return (slice(start, min(start + size, count)) for start in range(0, count, size))


def stream_rows(rows: Rows, scorer: Scorer,
                copies: Callable[[int], Iterator[np.ndarray]]) -> list[np.ndarray]:
    """Per row, the scores of the inputs `copies(r)` yields (blocks of (k, C, *spatial)),
    every row's copies batched together through the scorer."""
    counts = np.zeros(len(rows), np.int64)

    def blocks():
        for r in range(len(rows)):
            for block in copies(r):
                counts[r] += len(block)
                yield block, rows.targets[r], rows.foil(r)

    flat = scorer.stream(blocks())
    return np.split(flat, np.cumsum(counts)[:-1])


def patch_labels(spatial: tuple[int, ...], patch_size: int) -> np.ndarray:
    """(*spatial) int: each position's patch on a grid of `patch_size`-sided patches, each
    axis padded to a multiple of the side (floor half before, ceil half after: Quantus'
    get_padding_size), patches numbered in row-major order of the grid."""
    index = []
    for n in spatial:
        pad = (-n) % patch_size
        index.append((np.arange(n) + pad // 2) // patch_size)
    grid = tuple(-(-n // patch_size) for n in spatial)
    return np.ravel_multi_index(np.meshgrid(*index, indexing="ij"), grid)


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of `a` with the same row of `b`, (rows,); NaN where
    a row is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def unit_area(curves: np.ndarray) -> np.ndarray:
    """Trapezoid area under each row's curve with unit spacing (Quantus' calculate_auc)."""
    return (curves[:, 1:] + curves[:, :-1]).sum(axis=1) / 2
