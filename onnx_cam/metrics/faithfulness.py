"""Quantus' faithfulness metrics (Quantus 0.6.0 definitions unless said otherwise), every
perturbed input one more item of a batch through ONNX Runtime.

Each metric reads the rows' relevance (features.py: a map, or a per-channel attribution),
scaled per row by its largest |value| and, where Quantus' default says so, taken as |.|
(`absolute=` overrides). Removed features take the `baseline` of deletion / insertion
(Quantus' default "black" is the item's minimum: pass an array, or compare with "zero").
Curves are integrated with unit spacing, as Quantus' calculate_auc.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.spatial.distance import pdist, squareform

from .features import (
    chunks,
    descending,
    features_in_step,
    patch_labels,
    pearson,
    relevance,
    removed,
    step_masks,
    step_of,
    stream_rows,
    unit_area,
)
from .options import MetricError, Purpose, row_rng
from .scoring import Rows
from .similarity import spearman

SUBSETS, FILLS, PERTURBATIONS = Purpose.SUBSETS, Purpose.FILLS, Purpose.PERTURBATIONS
MONOTONICITY_SAMPLES, INFIDELITY_SAMPLES = 100, 10


def _absolute(ctx, default: bool) -> bool:
    return default if ctx.options.absolute is None else ctx.options.absolute


def _given(ctx, rows: Rows, name: str, tail: tuple[int, ...]) -> np.ndarray | None:
    """Option `name`'s explicit draws for the rows, checked to be (explanation rows, *tail)."""
    value = getattr(ctx.options, name)
    if value is None:
        return None
    value = np.asarray(value)
    if value.shape != (len(ctx.finite), *tail):
        raise MetricError(f"{name} must be {(len(ctx.finite), *tail)} (explanation rows, ...), "
                          f"got {value.shape}.")
    return value[rows.ids]


def _masked(rows: Rows, r: int, masks: np.ndarray) -> np.ndarray:
    """Feature masks (M, F) as (M, K, *spatial) for row r's relevance shape."""
    channels = 1 if rows.attributions is None else rows.attributions.shape[1]
    return masks.reshape(len(masks), channels, *rows.maps.shape[1:])


def _remove_steps(ctx, rows: Rows, count: int,
                  masks_of: Callable[[int, slice], np.ndarray]) -> list[np.ndarray]:
    """Per row, the scores with the features of each of its `count` masks removed;
    masks_of(r, part) gives the masks (len(part), F) of steps `part`."""
    batch = ctx.options.batch_size

    def copies(r):
        for part in chunks(count, batch):
            yield removed(ctx.perturbation, rows.item(r), _masked(rows, r, masks_of(r, part)))

    return stream_rows(rows, ctx.scorer, copies)


def _steps(ctx, a: np.ndarray, most_first: bool) -> tuple[list[np.ndarray], int]:
    """Each row's step of each feature (`features_in_step` at a time, most or least
    relevant first) and the number of steps."""
    per = features_in_step(a.shape[1], ctx.options.features_in_step, ctx.options.step)
    order = [descending(v) if most_first else np.argsort(v, kind="stable") for v in a]
    return [step_of(o, per) for o in order], -(-a.shape[1] // per)


def faithfulness_correlation(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """Bhatt et al. 2020: Pearson correlation, over `runs` random subsets of `subset_size`
    features, between the subset's relevance sum and the score drop when it is removed.
    Higher is better. runs x forward passes per row."""
    o = ctx.options
    a = relevance(rows, _absolute(ctx, False)).reshape(len(rows), -1)
    count = a.shape[1]
    if o.subset_size >= count:
        raise MetricError(f"subset_size={o.subset_size} must be below the {count} features.")
    subsets = _given(ctx, rows, "subsets", (o.runs, o.subset_size))
    if subsets is None:
        rngs = [row_rng(o.seed, i, SUBSETS) for i in rows.ids]
        subsets = np.stack([[rng.choice(count, o.subset_size, replace=False)
                             for _ in range(o.runs)] for rng in rngs]).reshape(
            len(rows), o.runs, o.subset_size)
    elif subsets.min() < 0 or subsets.max() >= count:
        raise MetricError(f"subsets index features 0 ... {count - 1}.")

    def masks_of(r, part):
        masks = np.zeros((part.stop - part.start, count), bool)
        masks[np.arange(len(masks))[:, None], subsets[r, part]] = True
        return masks

    scores = np.stack(_remove_steps(ctx, rows, o.runs, masks_of))
    sums = np.take_along_axis(a[:, None, :], subsets, axis=2).sum(axis=2)
    return {"faithfulness_correlation": pearson(sums, ctx.original[:, None] - scores)}


def faithfulness_estimate(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """Alvarez-Melis & Jaakkola 2018: Pearson correlation, over the features taken
    `features_in_step` at a time from the most relevant, between each group's relevance sum
    and the score drop when that group alone is removed. Higher is better."""
    a = relevance(rows, _absolute(ctx, False)).reshape(len(rows), -1)
    step, steps = _steps(ctx, a, most_first=True)
    scores = np.stack(_remove_steps(ctx, rows, steps, lambda r, part: step_masks(
        step[r], part, cumulative=False)))
    sums = np.stack([np.bincount(s, a[r], steps) for r, s in enumerate(step)])
    return {"faithfulness_estimate": pearson(sums, ctx.original[:, None] - scores)}


def monotonicity(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """Arya et al. 2019: from the fully removed input, put the features back
    `features_in_step` at a time, least relevant first; 1 if the score never decreases,
    else 0. Higher is better. (Quantus 0.6.0 fills the baseline into the baseline instead of
    putting x back, so it always returns True; this puts x back.)"""
    a = relevance(rows, _absolute(ctx, True)).reshape(len(rows), -1)
    step, steps = _steps(ctx, a, most_first=False)
    curves = _remove_steps(ctx, rows, steps, lambda r, part: ~step_masks(
        step[r], part, cumulative=True))
    return {"monotonicity": np.array([float(np.all(np.diff(c) >= 0)) for c in curves])}


def monotonicity_correlation(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """Nguyen & Martinez 2020: for the features taken `features_in_step` at a time, least
    relevant first, `samples` (100) copies with the group set to one uniform value each
    (`uniform_range`; Quantus: (0, 1)); Spearman correlation between the groups' relevance
    sums and the mean squared score change, divided by the score squared (when |score| >=
    `eps`). Higher is better. steps x samples forward passes per row."""
    o = ctx.options
    a = relevance(rows, _absolute(ctx, True)).reshape(len(rows), -1)
    samples = o.samples or MONOTONICITY_SAMPLES
    step, steps = _steps(ctx, a, most_first=False)
    fills = _given(ctx, rows, "fills", (steps, samples))

    def values(r):
        if fills is not None:
            return fills[r].astype(np.float64)
        item = rows.item(r)
        low, high = o.uniform_range or (float(item.min()), float(item.max()))
        return row_rng(o.seed, rows.ids[r], FILLS).uniform(low, high, (steps, samples))

    def copies(r):
        fill, item = values(r).ravel(), rows.item(r)
        expand = (1,) * (item.ndim - 1)
        for part in chunks(steps * samples, o.batch_size):
            which = np.arange(part.start, part.stop)
            masks = step[r][None] == (which // samples)[:, None]
            yield np.where(_masked(rows, r, masks), fill[which].reshape(-1, 1, *expand),
                           item[None]).astype(item.dtype)

    scores = np.stack(stream_rows(rows, ctx.scorer, copies)).reshape(len(rows), steps, samples)
    y = ctx.original
    scale = np.where(np.abs(y) >= o.eps, 1.0 / np.where(y == 0, 1, y) ** 2, 1.0)
    variance = ((scores - y[:, None, None]) ** 2).mean(axis=2) * scale[:, None]
    sums = np.stack([np.bincount(s, a[r], steps) for r, s in enumerate(step)])
    return {"monotonicity_correlation": spearman(sums, variance)}


def pixel_flipping(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """Bach et al. 2015: the score as the features are removed `features_in_step` at a
    time, most relevant first; the curve's area (unit steps). Lower is better."""
    a = relevance(rows, _absolute(ctx, False)).reshape(len(rows), -1)
    step, steps = _steps(ctx, a, most_first=True)
    curves = _remove_steps(ctx, rows, steps, lambda r, part: step_masks(
        step[r], part, cumulative=True))
    return {"pixel_flipping": unit_area(np.stack(curves))}


def _patch_curves(ctx, rows: Rows, labels_of: Callable[[int], np.ndarray],
                  order_of: Callable[[np.ndarray], np.ndarray], limit: int | None = None,
                  mean: bool = False) -> list[np.ndarray]:
    """Per row, the scores as whole patches / segments (labels 0 ... n - 1; all channels
    of their positions) are removed cumulatively in `order_of(relevance sum, or mean, per
    patch)`, at most `limit` of them."""
    a = relevance(rows, _absolute(ctx, False))
    batch = ctx.options.batch_size

    def copies(r):
        labels = labels_of(r).ravel()
        per_patch = np.bincount(labels, a[r].reshape(a.shape[1], -1).sum(axis=0))
        if mean:
            per_patch /= a.shape[1] * np.bincount(labels)
        order = order_of(per_patch)[:limit]
        rank = np.full(len(per_patch), len(order))
        rank[order] = np.arange(len(order))
        for part in chunks(len(order), batch):
            masks = rank[labels][None] <= np.arange(part.start, part.stop)[:, None]
            yield ctx.perturbation.apply(rows.item(r), masks.reshape(-1, *rows.maps.shape[1:]))

    return stream_rows(rows, ctx.scorer, copies)


def region_perturbation(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """Samek et al. 2017: patches of side `patch_size` on a grid (each axis padded to a
    multiple, as Quantus) removed cumulatively by their relevance (`order`: "morf" most
    relevant first), the first `regions` of them; the area (unit steps) of the score drop
    curve. Higher is better for morf (Quantus labels it lower), lower for lerf."""
    labels = patch_labels(rows.maps.shape[1:], ctx.options.patch_size)
    most_first = ctx.options.order == "morf"
    curves = _patch_curves(ctx, rows, lambda r: labels,
                           descending if most_first else
                           (lambda v: np.argsort(v, kind="stable")), limit=ctx.options.regions)
    return {"region_perturbation": unit_area(ctx.original[:, None] - np.stack(curves))}


def selectivity(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """Montavon et al. 2018: every `patch_size` patch removed cumulatively, most relevant
    first; the area (unit steps) of the score curve. Lower is better."""
    labels = patch_labels(rows.maps.shape[1:], ctx.options.patch_size)
    curves = _patch_curves(ctx, rows, lambda r: labels, descending)
    return {"selectivity": unit_area(np.stack(curves))}


def irof(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """Rieger & Hansen 2020, Iterative Removal Of Features: segments (`segments`, e.g.
    superpixels; Quantus computes SLIC ones; default a `patch_size` grid) removed
    cumulatively by their mean relevance, most first; segments minus the area (unit steps)
    of score / original score. Higher is better; NaN where the original score is <= 0."""
    given = ctx.options.segments
    spatial = rows.maps.shape[1:]
    if given is not None:
        given = np.asarray(given)
        if given.shape[1:] != spatial or given.shape[0] <= rows.items.max():
            raise MetricError(f"segments must be (items, *{spatial}) int labels, one map "
                              f"per input item; got {given.shape}.")
        segments = [np.unique(given[i], return_inverse=True)[1].reshape(spatial)
                    for i in rows.items]
    else:
        segments = [patch_labels(spatial, ctx.options.patch_size)] * len(rows)
    curves = _patch_curves(ctx, rows, segments.__getitem__, descending, mean=True)
    y = ctx.original
    with np.errstate(divide="ignore", invalid="ignore"):
        aoc = np.array([len(c) - unit_area((c / y[r])[None])[0]
                        for r, c in enumerate(curves)])
    return {"irof": np.where(y > 0, aoc, np.nan)}


def sufficiency(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """Dasgupta et al. 2022: among the other rows whose relevance lies within
    `sufficiency_threshold` (standardised Euclidean distance, divided by the largest
    between rows of this call) the fraction predicted as the same class; 0 with none.
    Higher is better. Depends on the rows evaluated together (Quantus: each batch of 64).
    Features constant over the rows are left out (scipy would divide by their zero
    variance). No forward pass."""
    a = relevance(rows, _absolute(ctx, True)).reshape(len(rows), -1)
    if len(rows) < 2:
        return {"sufficiency": np.zeros(len(rows))}
    varying = a.var(axis=0, ddof=1) > 0
    distance = squareform(pdist(a[:, varying], "seuclidean")) if varying.any() else \
        np.zeros((len(rows), len(rows)))
    top = distance.max()
    near = (distance / top if top > 0 else distance) <= ctx.options.sufficiency_threshold
    np.fill_diagonal(near, False)
    predicted = ctx.predicted[rows.ids]
    same = predicted[:, None] == predicted[None]
    count = near.sum(axis=1)
    return {"sufficiency": (same & near).sum(axis=1) / np.where(count == 0, np.inf, count)}


def infidelity(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """Yeh et al. 2019 as Captum's infidelity with normalize=True: E[(beta a . I - (f(x) -
    f(x - I)))^2] over `samples` (10) Gaussian perturbations I of std `infidelity_noise`,
    beta the least-squares scale of the relevance (maps have no scale of their own). A map
    (K = 1) weighs every channel of its position. Lower is better."""
    o = ctx.options
    a = relevance(rows, _absolute(ctx, False))
    samples = o.samples or INFIDELITY_SAMPLES
    item_shape = rows.inputs.shape[1:]
    given = _given(ctx, rows, "perturbations", (samples, *item_shape))

    def noise(r):
        if given is not None:
            return given[r].astype(np.float64)
        return row_rng(o.seed, rows.ids[r], PERTURBATIONS).normal(
            0.0, o.infidelity_noise, (samples, *item_shape))

    draws = [noise(r) for r in range(len(rows))]

    def copies(r):
        for part in chunks(samples, o.batch_size):
            yield (rows.item(r)[None] - draws[r][part]).astype(rows.inputs.dtype)

    drop = ctx.original[:, None] - np.stack(stream_rows(rows, ctx.scorer, copies))
    dot = np.stack([(d * a[r][None]).reshape(samples, -1).sum(axis=1)
                    for r, d in enumerate(draws)])
    dd, dy, yy = (dot * dot).sum(1), (dot * drop).sum(1), (drop * drop).sum(1)
    beta = dy / np.where(dd == 0, 1.0, dd)
    return {"infidelity": (beta * beta * dd - 2 * beta * dy + yy) / samples}


def infidelity_quantus(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """Quantus 0.6.0's Infidelity: for each side in `infidelity_patch_sizes`, the grid's
    patches removed cumulatively in row-major order; the mean over steps of (score drop -
    sum of relevance x input change)^2, averaged over the sides. The relevance is used as
    given (not rescaled: Quantus' normalise=False). Lower is better. (Quantus repeats this
    n_perturb_samples times; with a fixed baseline every repeat is the same.)"""
    a = relevance(rows, _absolute(ctx, False), normalise=False)
    spatial = rows.maps.shape[1:]
    losses = []
    for side in ctx.options.infidelity_patch_sizes:
        labels = patch_labels(spatial, side)
        curves = np.stack(_patch_curves(ctx, rows, lambda r, lab=labels: lab,
                                        lambda v: np.arange(len(v))))
        patches = labels.max() + 1
        changes = np.empty_like(curves)
        for r in range(len(rows)):
            masks = labels[None] <= np.arange(patches).reshape((-1,) + (1,) * len(spatial))
            item = rows.item(r).astype(np.float64)
            change = item[None] - ctx.perturbation.apply(item, masks)
            changes[r] = (change * a[r][None]).reshape(patches, -1).sum(axis=1)
        losses.append(((ctx.original[:, None] - curves - changes) ** 2).mean(axis=1))
    return {"infidelity_quantus": np.mean(losses, axis=0)}


METRICS: dict[str, Callable] = {
    "faithfulness_correlation": faithfulness_correlation,
    "faithfulness_estimate": faithfulness_estimate,
    "monotonicity": monotonicity,
    "monotonicity_correlation": monotonicity_correlation,
    "pixel_flipping": pixel_flipping,
    "region_perturbation": region_perturbation,
    "selectivity": selectivity,
    "irof": irof,
    "sufficiency": sufficiency,
    "infidelity": infidelity,
    "infidelity_quantus": infidelity_quantus,
}
