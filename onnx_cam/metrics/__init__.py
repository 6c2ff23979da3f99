"""How far to trust a map: faithfulness metrics, sanity checks and dataset statistics.

>>> res = exp.explain(x, methods="gradcam")
>>> values = onnx_cam.metrics.evaluate(exp, x, res, ["deletion", "road", "avg_drop"])
>>> values["deletion"]          # one value per row of `res`: (item, target, foil)

Every perturbed input is one more item of a batch through ONNX Runtime (`batch_size` copies
per run). Inputs are 1D (C, T), 2D (C, H, W) or 3D (C, D, H, W) items, in the model's own
layout (channels-last models included); the maps cover the input's spatial axes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property

import numpy as np

from ..explanation import INPUT
from . import complexity, faithfulness, localisation, randomisation, robustness, sanity
from .confidence import confidence
from .curves import area, curves
from .options import MetricError, Options, Purpose, row_rng
from .perturb import Perturbation, linear_impute, neighbour_stencil, ranked_masks
from .relevance import relevance
from .road import road
from .sanity import Cascade, parameter_layers, randomize
from .scoring import Rows, Scorer, score_kind
from .similarity import spearman, ssim
from .stats import ClassStatistics

DEFAULT_METRICS = ("deletion", "insertion", "road", "avg_drop", "avg_increase")


class _Context:
    """What the metrics of one evaluate call share: rows, scorer, perturbation, options."""

    def __init__(self, explainer, x, explanation, method, layer, options: Options,
                 input: str | None = None):
        # several model inputs: the explained one is perturbed, the others fed as given
        x, explainer = _explained(explainer, x, explanation, layer, input)
        self.explainer, self.options, self.explanation = explainer, options, explanation
        rows = Rows.from_explanation(explainer, x, explanation, method, layer)
        self.finite = rows.finite   # rows with NaN / Inf in their input or map: NaN metrics
        self.rows = rows if self.finite.all() else rows.subset(self.finite)
        self.method = method if method is not None else explanation.methods[0]
        self.layer = layer if layer is not None else (
            explanation.layers[0] if explanation.layers else INPUT)
        self.map_score = explanation.score
        self.predicted = np.asarray(explanation.predicted)
        side = explainer._side
        self.scorer = Scorer(explainer, self.rows.inputs.shape[2:],
                             score_kind(explainer, options.score), options.batch_size,
                             None if side is None else side.take(self.rows.items))
        self.perturbation = Perturbation(self._baseline(), options.blur_sigma)

    def _baseline(self):
        baseline = self.options.baseline
        item = self.rows.inputs.shape[1:]
        if baseline is None:
            return "mean" if len(item) == 2 else "blur"
        if isinstance(baseline, str):
            return baseline
        baseline = np.asarray(baseline, np.float32)
        if self.explainer.model.channels_last and baseline.ndim == len(item):
            baseline = np.moveaxis(baseline, -1, 0)  # given as the model takes an item
        try:
            np.broadcast_shapes(baseline.shape, item)
        except ValueError:
            raise MetricError(f"A baseline array must broadcast to one item as the model takes "
                              f"it; got shape {baseline.shape}.") from None
        return baseline

    def expand(self, values: np.ndarray, axis: int = 0) -> np.ndarray:
        """Values of the finite rows placed among NaN for the others, along `axis`."""
        values = np.moveaxis(np.asarray(values, np.float64), axis, 0)
        full = np.full((len(self.finite), *values.shape[1:]), np.nan)
        full[self.finite] = values
        return np.moveaxis(full, 0, axis)

    @cached_property
    def original(self) -> np.ndarray:
        """(rows,) the unperturbed scores."""
        rows = self.rows
        return self.scorer.stream((rows.item(r)[None], rows.targets[r], rows.foil(r))
                                  for r in range(len(rows)))

    @cached_property
    def random_rows(self) -> Rows:
        """The rows with uniformly random maps in place of theirs (the random-map baseline)."""
        shape = self.rows.maps.shape[1:]
        maps = np.stack([row_rng(self.options.seed, i, Purpose.RANDOM_MAP).random(shape)
                         for i in self.rows.ids]).astype(np.float32)
        return self.rows.with_maps(maps)


def _explained(explainer, x, explanation, layer, input):
    """(the explained input, the Explainer holding the other inputs) of a model with several
    inputs (see Explainer.explain's input=); x and the Explainer for a model with one."""
    if len(explainer.model.input_names) == 1:
        return x, explainer
    named = layer if layer is not None else (explanation.layers or ["auto"])[0]
    return explainer._route(x, input, "auto" if named == INPUT else named)


def _one_input(ctx: _Context) -> None:
    if ctx.explainer._side is not None:
        raise MetricError("Sanity checks explain the rows again with a changed model or "
                          "target; they take models with one input (this one has "
                          f"{list(ctx.explainer.model.input_names)}).")


def _curve(insertion: bool) -> Callable:
    def family(ctx: _Context, rows: Rows) -> dict[str, np.ndarray]:
        o = ctx.options
        fractions, scores = curves(rows, ctx.scorer, ctx.perturbation, step=o.step,
                                   order=o.order, insertion=insertion, seed=o.seed)
        return {"insertion" if insertion else "deletion": area(fractions, scores)}
    return family


def _road(ctx: _Context, rows: Rows) -> dict[str, np.ndarray]:
    o = ctx.options
    return road(rows, ctx.scorer, ctx.original, fractions=o.road_fractions, noise=o.road_noise,
                seed=o.seed)


def _confidence(ctx: _Context, rows: Rows) -> dict[str, np.ndarray]:
    return confidence(rows, ctx.scorer, ctx.original)


def _randomization(ctx: _Context, rows: Rows) -> dict[str, np.ndarray]:
    _one_input(ctx)
    o = ctx.options
    return sanity.randomized_similarity(ctx.explainer, rows, ctx.method, ctx.layer,
                                        ctx.map_score, mode=o.randomization, seed=o.seed,
                                        batch_size=o.batch_size)


def _random_label(ctx: _Context, rows: Rows) -> dict[str, np.ndarray]:
    _one_input(ctx)
    return sanity.random_label_similarity(ctx.explainer, rows, ctx.method, ctx.layer,
                                          ctx.map_score, seed=ctx.options.seed,
                                          batch_size=ctx.options.batch_size)


def _class_distance(ctx: _Context, rows: Rows) -> dict[str, np.ndarray]:
    reference = ctx.options.class_stats
    if reference is None:
        reference = ClassStatistics().add(rows.maps, rows.targets)
    return {"class_distance": reference.distance(rows.maps, rows.targets)}


# robustness, localisation and randomisation: {name: family}, each module's own
FAMILIES: dict[str, Callable] = {**robustness.FAMILIES, **localisation.FAMILIES,
                                 **randomisation.FAMILIES}


# metrics of a map's faithfulness; each also exists as "<name>_random", on random maps
FAITHFULNESS: dict[str, Callable] = {
    "deletion": _curve(False), "insertion": _curve(True),
    "road": _road, "road_morf": _road, "road_lerf": _road,
    "avg_drop": _confidence, "avg_increase": _confidence,
    **faithfulness.METRICS,
}
CHECKS: dict[str, Callable] = {
    "randomization_spearman": _randomization, "randomization_ssim": _randomization,
    "random_label_spearman": _random_label, "random_label_ssim": _random_label,
    "class_distance": _class_distance,
    **complexity.METRICS,
}
METRICS = (*FAITHFULNESS, *(f"{m}_random" for m in FAITHFULNESS), *CHECKS, *FAMILIES)


def evaluate(explainer, x, explanation, metrics: str | Sequence[str] = DEFAULT_METRICS, *,
             method: str | None = None, layer: str | None = None, input: str | None = None,
             **options) -> dict[str, np.ndarray]:
    """One value per row of `explanation` for each metric: {name: (rows,) float64}; NaN
    for rows whose input item or map holds NaN / Inf (explain(..., nonfinite="flag")).

    explainer: the Explainer of the model explained; x: the input given to explain (the
    model's layout); explanation: its result; method / layer: which map (needed when it
    holds several). options: see Options (score, step, order, baseline, blur_sigma,
    road_fractions, road_noise, randomization, batch_size, seed, class_stats). A model with
    several inputs: x as given to explain (a dict or tuple), input= as given to explain; the
    explained input is perturbed, the others fed as given (sanity checks are refused).

    Metrics (better: the direction a more faithful map moves the value):
      deletion (lower), insertion (higher)   area under the deletion / insertion curve
      road (higher), road_morf (lower), road_lerf (higher)   ROAD, noisy linear imputation
      avg_drop (lower), avg_increase (higher)   drop / increase in confidence on cam * x
      <any of the above>_random   the same on a uniformly random map: the baseline to beat
      randomization_spearman, randomization_ssim (lower)   maps of the fully randomised
          model against the original ones (Adebayo et al.)
      random_label_spearman, random_label_ssim (lower)   maps of a random other class
      class_distance   RMS distance from the mean map of the rows of the same class
      robustness (lower; re-explain perturbed copies; robustness.py): max_sensitivity,
          avg_sensitivity, local_lipschitz_estimate, continuity, relative_input_stability,
          relative_output_stability, relative_representation_stability
      localisation (higher; masks=; localisation.py): pointing_game,
          attribution_localisation, top_k_intersection, relevance_mass_accuracy,
          relevance_rank_accuracy, auc, focus, energy_pointing_game
      randomisation (randomisation.py): mprt_independent, smooth_mprt, random_logit (lower),
          efficient_mprt (higher)
      Quantus' faithfulness metrics (faithfulness.py; each also as <name>_random):
      faithfulness_correlation, faithfulness_estimate, monotonicity,
          monotonicity_correlation, irof, sufficiency (higher); pixel_flipping,
          selectivity, infidelity (Captum's), infidelity_quantus (lower);
          region_perturbation (higher with order="morf")
      complexity.py: sparseness (higher), complexity, effective_complexity (lower);
          arcc (higher; pytorch-grad-cam's harmonic-mean composite)
    """
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise MetricError(f"Unknown metric(s) {unknown}; known: {list(METRICS)}.")
    ctx = _Context(explainer, x, explanation, method, layer, Options.from_kwargs(options),
                   input)
    if not len(ctx.rows):
        return {name: np.full(len(ctx.finite), np.nan) for name in names}
    computed: dict[tuple[Callable, bool], dict[str, np.ndarray]] = {}
    results: dict[str, np.ndarray] = {}
    for name in names:
        on_random = name.endswith("_random")
        base = name.removesuffix("_random")
        family = FAITHFULNESS.get(base) or CHECKS.get(base) or FAMILIES[base]
        if (family, on_random) not in computed:
            rows = ctx.random_rows if on_random else ctx.rows
            computed[family, on_random] = family(ctx, rows)
        results[name] = ctx.expand(computed[family, on_random][base])
    return results


def deletion_curves(explainer, x, explanation, *, insertion: bool = False,
                    method: str | None = None, layer: str | None = None,
                    input: str | None = None, **options) -> tuple[np.ndarray, np.ndarray]:
    """The curves behind "deletion" / "insertion": (fractions (K,), scores (rows, K))."""
    o = Options.from_kwargs(options)
    ctx = _Context(explainer, x, explanation, method, layer, o, input)
    fractions, scores = curves(ctx.rows, ctx.scorer, ctx.perturbation, step=o.step,
                               order=o.order, insertion=insertion, seed=o.seed)
    return fractions, ctx.expand(scores)


def cascading_randomization(explainer, x, explanation, *, method: str | None = None,
                            layer: str | None = None, steps: int | None = None,
                            randomization: str = "normal", seed: int = 0,
                            batch_size: int = 64) -> Cascade:
    """Adebayo et al.'s cascading randomisation: the top 1, 2, ... `steps` (default: all)
    parameter layers of the ONNX model redrawn in turn, the rows explained again each time;
    Cascade.spearman / .ssim are (steps, rows) similarities to the original maps."""
    o = Options(randomization=randomization, seed=seed, batch_size=batch_size)
    ctx = _Context(explainer, x, explanation, method, layer, o)
    _one_input(ctx)
    cascade = sanity.cascading_randomization(explainer, ctx.rows, ctx.method, ctx.layer,
                                             ctx.map_score, steps=steps, mode=o.randomization,
                                             seed=seed, batch_size=batch_size)
    return Cascade(cascade.layers, ctx.expand(cascade.spearman, axis=1),
                   ctx.expand(cascade.ssim, axis=1))


def independent_randomization(explainer, x, explanation, *, method: str | None = None,
                              layer: str | None = None, randomization: str = "normal",
                              seed: int = 0, batch_size: int = 64) -> Cascade:
    """MPRT's independent variant: each parameter layer of the ONNX model redrawn alone (from
    the output down), the rows explained again each time; Cascade.spearman / .ssim are
    (layers, rows) similarities of the absolute maps to the original ones."""
    o = Options(randomization=randomization, seed=seed, batch_size=batch_size)
    ctx = _Context(explainer, x, explanation, method, layer, o)
    original = relevance(explanation, ctx.method, ctx.layer)[ctx.rows.ids]
    cascade = randomisation.independent(
        explainer, ctx.rows, ctx.method, ctx.layer, ctx.map_score,
        randomisation.independent_models(explainer, randomization, seed), batch_size, original)
    return Cascade(cascade.layers, ctx.expand(cascade.spearman, axis=1),
                   ctx.expand(cascade.ssim, axis=1))


__all__ = [
    "DEFAULT_METRICS", "METRICS", "Cascade", "ClassStatistics", "MetricError", "Options",
    "Perturbation", "Rows", "Scorer", "area", "cascading_randomization", "confidence",
    "curves", "deletion_curves", "evaluate", "linear_impute", "neighbour_stencil",
    "parameter_layers", "randomize", "ranked_masks", "road", "spearman", "ssim",
    "independent_randomization",
]
