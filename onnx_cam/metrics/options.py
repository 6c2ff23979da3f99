"""The options every metric reads, checked once, and the error a bad metric request raises."""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum

import numpy as np

from ..errors import OnnxCamError

SCORE_KINDS = ("probs", "logits", "log_probs")
BASELINES = ("zero", "mean", "blur", "interp")
ORDERS = ("morf", "lerf")
RANDOMIZATIONS = ("normal", "shuffle")
ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class MetricError(OnnxCamError):
    """An unknown metric, or a metric option out of range."""


@dataclass(frozen=True)
class Options:
    """How the metrics perturb and score (every field can be given to `evaluate` by name).

    score: what is read off the model for each row: "probs" (the model's softmax / sigmoid of
        the target; the default), "logits" or "log_probs"; with a foil, target minus foil.
        None: "probs", or "logits" for a single-output model without a head (regression).
    step: deletion / insertion step, as a fraction of the input's positions.
    order: "morf" (most relevant first, the default) or "lerf" for deletion / insertion.
    baseline: what replaces removed positions in deletion / insertion: "zero", "mean" (per
        channel, of the item), "blur" (Gaussian, `blur_sigma` samples, spatial axes only),
        "interp" (linear interpolation across removed positions; n-D: the noise-free linear
        imputation ROAD uses), or an array broadcastable to one item (C, *spatial).
        None: "mean" for signals (1D), "blur" for images and volumes.
    road_fractions: the fractions of positions ROAD removes (MoRF and LeRF alike).
    road_noise: standard deviation of the noise added to ROAD's imputed values (absolute, in
        input units, as Rong et al. and pytorch-grad-cam: meant for standardised inputs).
    randomization: how sanity checks redraw a layer's initializers: "normal" (Gaussian with
        each tensor's own mean and standard deviation) or "shuffle" (a permutation of them).
    batch_size: perturbed copies per ONNX Runtime run.
    seed: seeds the noise, the random maps and labels, and the randomised weights.
    class_stats: reference ClassStatistics for "class_distance" (None: the rows' own).
    masks: ground truth for localisation metrics, (N, *input_spatial) bool per input item.
    top_k: Top-K Intersection's k: a count of positions, or a fraction of them in (0, 1).
    robustness_samples: perturbed copies per row for sensitivity, Lipschitz and stability.
    sensitivity_radius: Max- / Avg-Sensitivity noise, uniform in [-radius, radius].
    lipschitz_std: Local Lipschitz Estimate noise, Gaussian with this std.
    stability_noise: (low, high) of the uniform noise of relative stability (RIS/ROS/RRS).
    stability_eps: what a zero counts as in the relative stabilities' divisions.
    representation_layer: RRS's layer (None: the explained one, or the deepest candidate).
    continuity_steps: Continuity's number of translations.
    smooth_samples / smooth_noise: Smooth MPRT's copies per row and noise std, as a fraction
        of each item's value range.

    Quantus' faithfulness and complexity metrics (faithfulness.py, complexity.py; a feature
    is a position of a map, or an element (channel, position) of a per-channel attribution):
    features_in_step: features removed per step (faithfulness_estimate, monotonicity,
        monotonicity_correlation, pixel_flipping); None: the `step` fraction of them.
    subset_size, runs: faithfulness_correlation's random subsets (224 features, 100 runs).
    subsets: (rows, runs, subset_size) feature indices to use instead of random ones.
    samples: draws per step (monotonicity_correlation, 100) or noise draws (infidelity, 10);
        None: each metric's default.
    eps: monotonicity_correlation's smallest |score| it divides by, and effective_complexity's
        threshold on |map| / max |map| (1e-5 both, Quantus' defaults).
    uniform_range: (low, high) of monotonicity_correlation's fill values; None: the item's
        (min, max). fills: (rows, steps, samples) fill values to use instead of random ones.
    patch_size: side of region_perturbation / selectivity's patches and of IROF's default
        segments (8 samples); infidelity_patch_sizes: infidelity_quantus' patches ((4,)).
    regions: patches region_perturbation removes (100).
    segments: IROF's segments, (N, *spatial) int labels per input item (e.g. superpixels);
        None: a grid of `patch_size` patches.
    sufficiency_threshold: normalised distance within which maps count as alike (0.6).
    infidelity_noise: std of infidelity's Gaussian perturbations (input units, 0.1).
    perturbations: (rows, samples, C, *spatial) infidelity perturbations I (the input
        becomes x - I) to use instead of random ones.
    absolute: score |map| instead of the map; None: each metric's Quantus default.
    """

    score: str | None = None
    step: float = 0.05
    order: str = "morf"
    baseline: str | np.ndarray | None = None
    blur_sigma: float = 5.0
    road_fractions: tuple[float, ...] = ROAD_FRACTIONS
    road_noise: float = 0.01
    randomization: str = "normal"
    batch_size: int = 64
    seed: int = 0
    class_stats: object = None
    # robustness / localisation / randomisation (their modules)
    masks: np.ndarray | None = None
    top_k: float = 0.02
    robustness_samples: int = 200
    sensitivity_radius: float = 0.2
    lipschitz_std: float = 0.1
    stability_noise: tuple[float, float] = (0.02, 0.2)
    stability_eps: float = 1e-6
    representation_layer: str | None = None
    continuity_steps: int = 28
    smooth_samples: int = 50
    smooth_noise: float = 0.1
    features_in_step: int | None = None
    subset_size: int = 224
    runs: int = 100
    subsets: np.ndarray | None = None
    samples: int | None = None
    eps: float = 1e-5
    uniform_range: tuple[float, float] | None = None
    fills: np.ndarray | None = None
    patch_size: int = 8
    infidelity_patch_sizes: tuple[int, ...] = (4,)
    regions: int = 100
    segments: np.ndarray | None = None
    sufficiency_threshold: float = 0.6
    infidelity_noise: float = 0.1
    perturbations: np.ndarray | None = None
    absolute: bool | None = None

    @classmethod
    def from_kwargs(cls, options: dict) -> Options:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise MetricError(f"Unknown metric option(s) {unknown}; the options are "
                              f"{sorted(known)}.")
        return cls(**options)

    def __post_init__(self):
        if self.score is not None and self.score not in SCORE_KINDS:
            raise MetricError(f"score={self.score!r} is not one of {SCORE_KINDS}.")
        if not 0 < self.step <= 1:
            raise MetricError(f"step={self.step} must be a fraction in (0, 1], e.g. 0.05.")
        if self.order not in ORDERS:
            raise MetricError(f"order={self.order!r} is not one of {ORDERS}.")
        if isinstance(self.baseline, str) and self.baseline not in BASELINES:
            raise MetricError(f"baseline={self.baseline!r} is not one of {BASELINES} "
                              "(or an array shaped like one item).")
        if self.blur_sigma <= 0:
            raise MetricError(f"blur_sigma={self.blur_sigma} must be > 0 (in samples).")
        fractions = np.asarray(self.road_fractions, float)
        if fractions.ndim != 1 or not len(fractions) or not ((fractions > 0)
                                                              & (fractions < 1)).all():
            raise MetricError(f"road_fractions={self.road_fractions} must be fractions in "
                              "(0, 1), e.g. (0.1, 0.2, ..., 0.9).")
        if self.road_noise < 0:
            raise MetricError(f"road_noise={self.road_noise} must be >= 0.")
        if self.randomization not in RANDOMIZATIONS:
            raise MetricError(f"randomization={self.randomization!r} is not one of "
                              f"{RANDOMIZATIONS}.")
        if self.batch_size < 1:
            raise MetricError(f"batch_size must be >= 1, got {self.batch_size}.")
        self._check_robustness()

    def _check_robustness(self):
        counts = {"robustness_samples": self.robustness_samples,
                  "continuity_steps": self.continuity_steps,
                  "smooth_samples": self.smooth_samples}
        for name, count in counts.items():
            if count < 1:
                raise MetricError(f"{name}={count} must be >= 1.")
        if self.smooth_noise < 0:
            raise MetricError(f"smooth_noise={self.smooth_noise} must be >= 0 (a fraction of "
                              "each item's value range).")
        if self.sensitivity_radius <= 0 or self.lipschitz_std <= 0:
            raise MetricError(f"sensitivity_radius={self.sensitivity_radius} and lipschitz_std="
                              f"{self.lipschitz_std} must be > 0 (in input units).")
        low, high = self.stability_noise
        if not 0 <= low < high:
            raise MetricError(f"stability_noise={self.stability_noise} must be (low, high) "
                              "with 0 <= low < high, e.g. (0.02, 0.2).")
        for name in ("subset_size", "runs", "patch_size", "regions"):
            if getattr(self, name) < 1:
                raise MetricError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("features_in_step", "samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise MetricError(f"{name} must be >= 1 (or None), got {getattr(self, name)}.")
        if not len(self.infidelity_patch_sizes) or min(self.infidelity_patch_sizes) < 1:
            raise MetricError(f"infidelity_patch_sizes={self.infidelity_patch_sizes} must be "
                              "patch sides >= 1, e.g. (4,).")
        if self.eps < 0 or self.infidelity_noise <= 0 or self.sufficiency_threshold < 0:
            raise MetricError("eps and sufficiency_threshold must be >= 0, infidelity_noise "
                              "> 0.")
        if self.uniform_range is not None and not self.uniform_range[0] < self.uniform_range[1]:
            raise MetricError(f"uniform_range={self.uniform_range} must be (low, high), "
                              "low < high.")


class Purpose(IntEnum):
    """What a row's random draws are for: each its own stream (row_rng), so two metrics never
    share draws."""

    NOISE = 1           # an imputation's noise (ROAD, deletion with "interp")
    LABEL = 2           # the random other label
    RANDOM_MAP = 3      # the random-map baseline
    SENSITIVITY = 10    # Max- / Avg-Sensitivity
    LIPSCHITZ = 11      # Local Lipschitz Estimate
    STABILITY = 12      # relative stabilities
    SMOOTH = 13         # Smooth MPRT
    SUBSETS = 20        # faithfulness_correlation's subsets
    FILLS = 21          # monotonicity_correlation's fill values
    PERTURBATIONS = 22  # infidelity's perturbations


def row_rng(seed: int, row: int, purpose: int) -> np.random.Generator:
    """A generator that depends only on (seed, row, purpose), not on batching or order."""
    return np.random.default_rng([seed, row, purpose])
