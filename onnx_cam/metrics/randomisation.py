"""Randomisation metrics beyond sanity.py's cascade: MPRT with each parameter layer
randomised alone, Smooth MPRT, Efficient MPRT and Random Logit (definitions of Quantus 0.6.0).

Maps are the relevance of `relevance.py`; MPRT and Smooth MPRT compare their absolute values
(Quantus' abs=True) by Spearman rank correlation, Random Logit by Quantus' SSIM. Randomised
models are copies of the ONNX model with initializers redrawn (sanity.randomize: options
`randomization` and `seed`); each is one Explainer and one explain run over all rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import numpy as np
import onnx
from scipy import ndimage, stats

from .options import Purpose, row_rng
from .relevance import explain_copies, relevance
from .sanity import (
    Cascade,
    _parameter_layers,
    explainer_of,
    random_labels,
    randomize,
)
from .scoring import Rows
from .similarity import spearman, ssim

ENTROPY_BINS = 100  # Efficient MPRT's histogram (Quantus' n_bins default)
SSIM_WINDOW = 7     # Quantus' SSIM: scikit-image's default window over the flattened map


def maps_of(explainer, rows: Rows, method, layer: str, score: str, batch_size: int, *,
            samples: int = 1, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """(rows, *spatial) relevance of the rows from `explainer`; with samples > 1, the mean over
    `samples` copies x + N(0, (noise (max x - min x))^2), the last copy noise-free (Smooth
    MPRT's denoising, the draws depending on (seed, row) only)."""
    out = np.empty(rows.maps.shape, np.float64)

    def copies():
        for r in range(len(rows)):
            item = rows.item(r).astype(np.float64)
            block = np.repeat(item[None], samples, axis=0)
            if samples > 1:
                std = noise * (item.max() - item.min())
                rng = row_rng(seed, int(rows.ids[r]), Purpose.SMOOTH)
                block[:-1] += std * rng.standard_normal((samples - 1, *item.shape))
            yield r, block

    def consume(r, maps, res, part):
        out[r] = maps.mean(axis=0)

    explain_copies(explainer, rows, method, layer, score, batch_size, copies(), consume)
    return out


def independent(explainer, rows: Rows, method, layer: str, score: str,
                models: Iterable[tuple[str, onnx.ModelProto]], batch_size: int,
                original: np.ndarray) -> Cascade:
    """Similarity of |original| to the |maps| each model gives, (steps, rows): Spearman, and
    SSIM of the maps min-max scaled per row (for CAMs: their [0, 1] maps, as the cascade).
    models: (name, randomised ModelProto) pairs, one explain run each."""
    names, rho, sim = [], [], []
    for name, proto in models:
        maps = maps_of(explainer_of(explainer, proto), rows, method, layer, score, batch_size)
        names.append(name)
        rho.append(spearman(np.abs(original), np.abs(maps)))
        sim.append(ssim(_scaled(np.abs(original)), _scaled(np.abs(maps))))
    return Cascade(names, np.array(rho), np.array(sim))


def _scaled(maps: np.ndarray) -> np.ndarray:
    flat = maps.reshape(len(maps), -1)
    low, high = flat.min(1), flat.max(1)
    span = np.where(high > low, high - low, 1.0)
    return ((flat - low[:, None]) / span[:, None]).reshape(maps.shape)


def independent_models(explainer, mode: str, seed: int):
    """Each parameter layer randomised alone, from the output down: (layer, ModelProto)."""
    proto = explainer.model.proto
    for layer in _parameter_layers(explainer):
        yield layer.name, randomize(proto, [layer], seed=seed, mode=mode)


def discrete_entropy(maps: np.ndarray, bins: int = ENTROPY_BINS) -> np.ndarray:
    """Entropy of each map's histogram over `bins` equal bins of its own range (Quantus'
    discrete_entropy, natural log)."""
    flat = maps.reshape(len(maps), -1)
    return np.array([stats.entropy(np.histogram(m, bins=bins)[0]) for m in flat])


def flat_ssim(a: np.ndarray, b: np.ndarray, window: int = SSIM_WINDOW) -> np.ndarray:
    """Quantus' SSIM of each row pair: scikit-image's structural_similarity of the flattened
    maps (uniform 7-sample window, sample covariance, data range of the pair, the window's
    radius cropped at both ends); NaN for a pair of equal constant maps."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    both = np.concatenate([a, b], axis=1)
    span = both.max(1, keepdims=True) - both.min(1, keepdims=True)

    def local(v):
        return ndimage.uniform_filter1d(v, window, axis=1, mode="reflect")

    ua, ub = local(a), local(b)
    scale = window / (window - 1)
    va, vb = scale * (local(a * a) - ua * ua), scale * (local(b * b) - ub * ub)
    vab = scale * (local(a * b) - ua * ub)
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        index = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua ** 2 + ub ** 2 + c1) * (va + vb + c2))
    pad = (window - 1) // 2
    return index[:, pad:a.shape[1] - pad].mean(axis=1)


def _original(ctx, rows: Rows) -> np.ndarray:
    return relevance(ctx.explanation, ctx.method, ctx.layer)[rows.ids]


def _randomised(ctx):
    """An Explainer of the model with every parameter layer randomised."""
    o = ctx.options
    proto = randomize(ctx.explainer.model.proto, _parameter_layers(ctx.explainer),
                      seed=o.seed, mode=o.randomization)
    return explainer_of(ctx.explainer, proto)


def mprt_family(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """{"mprt_independent"}: the mean over parameter layers of Spearman(|e|, |e_L|), e_L the
    map of the model with layer L alone randomised (Quantus' MPRT with
    layer_order="independent", return_average_correlation=True). Lower is better."""
    o = ctx.options
    cascade = independent(ctx.explainer, rows, ctx.method, ctx.layer, ctx.map_score,
                          independent_models(ctx.explainer, o.randomization, o.seed),
                          o.batch_size, _original(ctx, rows))
    return {"mprt_independent": cascade.spearman.mean(axis=0)}


def smooth_mprt_family(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """{"smooth_mprt"} (Hedström et al. 2023): Spearman of |mean map| over smooth_samples (50)
    noisy copies (std smooth_noise (0.1) x the item's range, the last copy noise-free), of the
    original and of the fully randomised model (Quantus' Smooth MPRT's last layer). Lower is
    better."""
    o = ctx.options
    kw = {"samples": o.smooth_samples, "noise": o.smooth_noise, "seed": o.seed}
    args = (rows, ctx.method, ctx.layer, ctx.map_score, o.batch_size)
    before = maps_of(ctx.explainer, *args, **kw)
    after = maps_of(_randomised(ctx), *args, **kw)
    return {"smooth_mprt": spearman(np.abs(before), np.abs(after))}


def efficient(randomised, rows: Rows, method, layer: str, score: str, batch_size: int,
              original: np.ndarray) -> np.ndarray:
    """(rows,) relative rise (H' - H) / H of the discrete entropy from the original maps to
    the maps `randomised` (an Explainer of the randomised model) gives."""
    before = discrete_entropy(original)
    after = discrete_entropy(maps_of(randomised, rows, method, layer, score, batch_size))
    with np.errstate(divide="ignore", invalid="ignore"):
        return (after - before) / before


def efficient_mprt_family(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """{"efficient_mprt"} (Hedström et al. 2023): the relative rise (H' - H) / H of the maps'
    discrete entropy (100 bins) from the model to the fully randomised model. Higher is
    better."""
    return {"efficient_mprt": efficient(_randomised(ctx), rows, ctx.method, ctx.layer,
                                        ctx.map_score, ctx.options.batch_size,
                                        _original(ctx, rows))}


def random_logit_family(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """{"random_logit"} (Sixt et al. 2020, Quantus' RandomLogit): SSIM of the map with the
    map of a random other class of the same item (flattened, Quantus' SSIM). Lower is
    better."""
    o = ctx.options
    other = replace(rows, targets=random_labels(rows, ctx.explainer.num_classes, o.seed))
    maps = maps_of(ctx.explainer, other, ctx.method, ctx.layer, ctx.map_score, o.batch_size)
    return {"random_logit": flat_ssim(_original(ctx, rows), maps)}


FAMILIES = {"mprt_independent": mprt_family, "smooth_mprt": smooth_mprt_family,
            "efficient_mprt": efficient_mprt_family, "random_logit": random_logit_family}
