"""How simple a map is (Quantus 0.6.0's complexity metrics) and pytorch-grad-cam's ARCC.

The complexity metrics read |relevance| (features.py: a map, or a per-channel attribution
over its C x positions elements) scaled per row by its largest value; no forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..explanation import INPUT
from .features import pearson, relevance
from .road import road
from .scoring import Rows

ARCC_FRACTIONS = (0.2, 0.4, 0.6, 0.8)   # pytorch-grad-cam's ARCC road_percentiles


def _magnitudes(ctx, rows: Rows) -> np.ndarray:
    absolute = True if ctx.options.absolute is None else ctx.options.absolute
    return relevance(rows, absolute).reshape(len(rows), -1)


def sparseness(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """Chalasani et al. 2020: the Gini index of the features' values (+ 1e-7, as Quantus);
    higher is sparser (better)."""
    a = np.sort(_magnitudes(ctx, rows) + 1e-7, axis=1)
    n = a.shape[1]
    weights = 2 * np.arange(1, n + 1) - n - 1
    return {"sparseness": (a * weights).sum(axis=1) / (n * a.sum(axis=1))}


def complexity(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """Bhatt et al. 2020: the entropy (nats) of the features' share of the total relevance;
    lower is simpler (better). An all-zero map gives NaN."""
    a = _magnitudes(ctx, rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = a / np.abs(a).sum(axis=1, keepdims=True)
        return {"complexity": -(share * np.log(share + 1e-12)).sum(axis=1)}


def effective_complexity(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """Nguyen & Martinez 2020: how many features exceed `eps` (1e-5) of the largest; lower
    is simpler (better)."""
    a = _magnitudes(ctx, rows)
    return {"effective_complexity": (a > ctx.options.eps).sum(axis=1).astype(np.float64)}


def arcc(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """pytorch-grad-cam 1.5.7's ARCC: 3 / (1 / coherency + 1 / (1 - complexity) + 1 / road),
    each term + 1e-8 - the harmonic mean its code computes (its docstring says geometric).
    complexity: mean |map|; coherency: (Pearson(map of x * map, map) + 1) / 2, one more
    explain of the masked rows; road: 2 x ROAD combined at 20, 40, 60, 80 % (noise
    `road_noise`), clipped to [0, 1]. Higher is better. Uses the [0, 1] map (cam)."""
    cams = rows.maps.astype(np.float64)
    flat = cams.reshape(len(rows), -1)
    simple = 1 - np.abs(flat).mean(axis=1)
    coherency = (pearson(_masked_maps(ctx, rows).reshape(len(rows), -1), flat) + 1) / 2
    combined = road(rows, ctx.scorer, ctx.original, fractions=ARCC_FRACTIONS,
                    noise=ctx.options.road_noise, seed=ctx.options.seed)["road"]
    combined = np.clip(2 * combined, 0, 1)
    value = 3 / (1 / (coherency + 1e-8) + 1 / (simple + 1e-8) + 1 / (combined + 1e-8))
    return {"arcc": value}


def _masked_maps(ctx, rows: Rows) -> np.ndarray:
    """The maps the same method gives for each row's input multiplied by its map."""
    given = rows.given[rows.items]
    cams = rows.maps.astype(given.dtype)
    masked = given * (cams[..., None] if ctx.explainer.model.channels_last else cams[:, None])
    res = ctx.explainer.explain(masked, targets=rows.targets.tolist(),
                                foils=None if rows.foils is None else rows.foils.tolist(),
                                layers=None if ctx.layer == INPUT else ctx.layer,
                                methods=ctx.method, score=ctx.map_score,
                                batch_size=ctx.options.batch_size)
    return res.cam(ctx.method, ctx.layer)


METRICS: dict[str, Callable] = {
    "sparseness": sparseness, "complexity": complexity,
    "effective_complexity": effective_complexity, "arcc": arcc,
}
