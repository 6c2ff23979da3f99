"""Robustness: how much a map moves when the input moves a little. Each metric re-explains
perturbed copies of every row with the row's method, layer, score, target and foil; the
copies of many rows go through `explain` together (`batch_size` per ONNX Runtime run).

Definitions follow Quantus 0.6.0 (formulas below, in its defaults), over the relevance maps
of `relevance.py` (a CAM's [0, 1] map; an attribution's signed channel sum), flattened over
the spatial axes. Noise is drawn per row (seeded by (seed, row)), channels first, the same at
any batch size. Lower is better for every metric here.
"""

from __future__ import annotations

import numpy as np

from ..explanation import INPUT
from .options import Purpose, row_rng
from .relevance import explain_copies, model_layout, relevance
from .scoring import Rows

SENSITIVITY, LIPSCHITZ, STABILITY = Purpose.SENSITIVITY, Purpose.LIPSCHITZ, Purpose.STABILITY
LIPSCHITZ_EPS = 1e-10   # Quantus' lipschitz_constant guard
CONTINUITY_EPS = 1e-9   # Quantus' Continuity guard


def _norm(v: np.ndarray) -> np.ndarray:
    """Frobenius norm of each copy over all but the first axis."""
    return np.sqrt((v.reshape(len(v), -1) ** 2).sum(1))


class _Run:
    """What every robustness family reads off the evaluate context."""

    def __init__(self, ctx, rows: Rows):
        o = ctx.options
        self.ctx, self.rows, self.options = ctx, rows, o
        self.maps = relevance(ctx.explanation, ctx.method, ctx.layer)[rows.ids]
        self.predicted = np.asarray(ctx.explanation.predicted)[rows.ids]
        self.logits = np.asarray(ctx.explanation.logits, np.float64)[rows.ids]

    def noisy(self, purpose: int, draw):
        """(row, copies (samples, C, *spatial) float64) for every row: x + draw(rng, shape)."""
        shape = (self.options.robustness_samples, *self.rows.inputs.shape[1:])
        for r in range(len(self.rows)):
            noise = draw(row_rng(self.options.seed, int(self.rows.ids[r]), purpose), shape)
            yield r, self.rows.item(r).astype(np.float64)[None] + noise

    def explain(self, copies, consume) -> None:
        ctx = self.ctx
        explain_copies(ctx.explainer, self.rows, ctx.method, ctx.layer, ctx.map_score,
                       self.options.batch_size, copies, consume)


def _with_inputs(copies, store: dict):
    """Pass (row, copies) through, keeping each row's float64 copies for the norms."""
    for r, block in copies:
        store[r] = block
        yield r, block


def sensitivity(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """{"max_sensitivity", "avg_sensitivity"} (Yeh et al. 2019): the max / mean over samples
    of ||e(x) - e(x + d)||_F / ||e(x)||_F, d uniform in [-r, r] per input value,
    r = sensitivity_radius (0.2), robustness_samples (200) copies per row."""
    run = _Run(ctx, rows)
    radius = run.options.sensitivity_radius
    ratios = np.full((len(rows), run.options.robustness_samples), np.nan)

    def consume(r, maps, res, part):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios[r] = _norm(maps - run.maps[r][None]) / _norm(run.maps[r][None])

    run.explain(run.noisy(SENSITIVITY, lambda g, s: g.uniform(-radius, radius, s)), consume)
    return {"max_sensitivity": ratios.max(1), "avg_sensitivity": ratios.mean(1)}


def local_lipschitz(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """{"local_lipschitz_estimate"} (Alvarez-Melis & Jaakkola 2018): the max over samples of
    ||e(x) - e(x + d)||_2 / (||d||_2 + 1e-10), d ~ N(0, lipschitz_std^2) (0.1)."""
    run = _Run(ctx, rows)
    std = run.options.lipschitz_std
    ratios = np.full((len(rows), run.options.robustness_samples), np.nan)
    inputs: dict[int, np.ndarray] = {}

    def consume(r, maps, res, part):
        moved = _norm(inputs.pop(r) - rows.item(r)[None])
        ratios[r] = _norm(maps - run.maps[r][None]) / (moved + LIPSCHITZ_EPS)

    copies = run.noisy(LIPSCHITZ, lambda g, s: g.normal(0.0, std, s))
    run.explain(_with_inputs(copies, inputs), consume)
    return {"local_lipschitz_estimate": ratios.max(1)}


def _relative(v: np.ndarray, base: np.ndarray, eps: float) -> np.ndarray:
    """||(base - v) / base||_F per copy, a zero of base counting as eps (Agarwal et al.)."""
    return _norm((base[None] - v) / (base + (base == 0) * eps)[None])


def _guard(norms: np.ndarray, eps: float) -> np.ndarray:
    return norms + (norms == 0) * eps


def stability(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """{"relative_input_stability", "relative_output_stability"} (Agarwal et al. 2022): the
    max over samples whose predicted class stays the same of
        RIS: ||(e - e') / e||_F / ||(x - x') / x||_F     ROS: ||(e - e') / e||_F / ||z - z'||_2
    with z the logits, x' = x + d, d uniform in stability_noise ((0.02, 0.2)), zeros of e
    and x counting as stability_eps (1e-6); NaN when every sample changes the prediction."""
    run = _Run(ctx, rows)
    eps, (low, high) = run.options.stability_eps, run.options.stability_noise
    samples = run.options.robustness_samples
    ris, ros = np.full((len(rows), samples), np.nan), np.full((len(rows), samples), np.nan)
    inputs: dict[int, np.ndarray] = {}

    def consume(r, maps, res, part):
        kept = np.asarray(res.predicted)[part] == run.predicted[r]
        moved = _guard(_relative(inputs.pop(r), rows.item(r).astype(np.float64), eps), eps)
        logits = np.asarray(res.logits, np.float64)[part]
        output = _guard(_norm(logits - run.logits[r][None]), eps)
        change = _relative(maps, run.maps[r], eps)
        ris[r] = np.where(kept, change / moved, np.nan)
        ros[r] = np.where(kept, change / output, np.nan)

    copies = run.noisy(STABILITY, lambda g, s: g.uniform(low, high, s))
    run.explain(_with_inputs(copies, inputs), consume)
    return {"relative_input_stability": _max_kept(ris),
            "relative_output_stability": _max_kept(ros)}


def _max_kept(values: np.ndarray) -> np.ndarray:
    """Each row's max over its samples left in (not NaN); NaN where none is."""
    out = np.full(len(values), np.nan)
    kept = ~np.isnan(values).all(1)
    out[kept] = np.nanmax(values[kept], 1)
    return out


def representation_stability(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """{"relative_representation_stability"} (Agarwal et al. 2022): RIS with the input's
    change replaced by ||(l - l') / l||_2 of the activations l of `representation_layer`
    (default: the explained layer; for input attributions the deepest candidate layer), on
    the same noise as RIS / ROS; one more forward run per copy."""
    run = _Run(ctx, rows)
    o = run.options
    layer = o.representation_layer or (ctx.layer if ctx.layer != INPUT
                                        else ctx.explainer.layers[0])
    eps, (low, high) = o.stability_eps, o.stability_noise
    rrs = np.full((len(rows), o.robustness_samples), np.nan)
    inputs: dict[int, np.ndarray] = {}
    given = model_layout(ctx.explainer, rows.inputs)
    reference = ctx.explainer.activations(given, layers=layer, batch_size=o.batch_size)[layer]

    def consume(r, maps, res, part):
        kept = np.asarray(res.predicted)[part] == run.predicted[r]
        copies = model_layout(ctx.explainer, inputs.pop(r).astype(np.float32))
        acts = ctx.explainer.activations(copies, layers=layer, batch_size=o.batch_size)[layer]
        base = reference[rows.items[r]].astype(np.float64)
        moved = _guard(_relative(acts.astype(np.float64), base, eps), eps)
        rrs[r] = np.where(kept, _relative(maps, run.maps[r], eps) / moved, np.nan)

    copies = run.noisy(STABILITY, lambda g, s: g.uniform(low, high, s))
    run.explain(_with_inputs(copies, inputs), consume)
    return {"relative_representation_stability": _max_kept(rrs)}


def translations(width: int, steps: int) -> np.ndarray:
    """Quantus' Continuity shifts: -W + dx, -W + 2 dx, ..., dx = (2 W + 1) // steps."""
    dx = (2 * width + 1) // steps
    return -width + dx * np.arange(1, steps + 1)


def translate(item: np.ndarray, shift: int) -> np.ndarray:
    """The item (C, *spatial) moved by `shift` along its last axis (positive: towards the
    end), the vacated positions filled with the item's minimum (Quantus' "black")."""
    out = np.full_like(item, item.min())
    width = item.shape[-1]
    if shift >= 0:
        out[..., shift:] = item[..., :max(width - shift, 0)]
    else:
        out[..., :max(width + shift, 0)] = item[..., -shift:]
    return out


def continuity(ctx, rows: Rows) -> dict[str, np.ndarray]:
    """{"continuity"} (Montavon et al. 2018, as Quantus 0.6.0): the input translated along
    its last spatial axis by continuity_steps (28) shifts from -W to +W, the gap filled with
    the item's minimum; the max over shifts of ||e - e'||_1 / (||x - x'||_2 + 1e-9), e
    taken as |relevance| (Quantus' abs=True)."""
    run = _Run(ctx, rows)
    shifts = translations(rows.inputs.shape[-1], run.options.continuity_steps)
    ratios = np.full((len(rows), len(shifts)), np.nan)
    inputs: dict[int, np.ndarray] = {}

    def consume(r, maps, res, part):
        moved = _norm(inputs.pop(r) - rows.item(r)[None])
        change = np.abs(np.abs(maps) - np.abs(run.maps[r])[None]).reshape(len(maps), -1)
        ratios[r] = change.sum(1) / (moved + CONTINUITY_EPS)

    copies = ((r, np.stack([translate(rows.item(r), int(s)) for s in shifts]))
              for r in range(len(rows)))
    run.explain(_with_inputs(copies, inputs), consume)
    return {"continuity": ratios.max(1)}


FAMILIES = {"max_sensitivity": sensitivity, "avg_sensitivity": sensitivity,
            "local_lipschitz_estimate": local_lipschitz,
            "relative_input_stability": stability, "relative_output_stability": stability,
            "relative_representation_stability": representation_stability,
            "continuity": continuity}
