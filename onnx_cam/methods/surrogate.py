"""LIME and KernelSHAP: a weighted linear surrogate of the score over input segments that
are kept or replaced by a baseline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import MethodError
from .base import InputBatch, InputMethod
from .masking import baseline_like, default_window, per_axis
from .segments import slic, window_segments


def fit_linear(features: np.ndarray, targets: np.ndarray, weights: np.ndarray,
               alpha: float) -> np.ndarray:
    """The coefficients (M,) of the weighted ridge regression with an unpenalised intercept,
    argmin sum_s w_s (y_s - b - z_s . beta)^2 + alpha |beta|^2 (sklearn's Ridge, and
    LinearRegression for alpha=0, with sample_weight). With alpha=0 and too few distinct
    samples, the minimum-norm solution, as sklearn's lstsq."""
    z, y, w = (np.asarray(a, np.float64) for a in (features, targets, weights))
    total = w.sum()
    root = np.sqrt(w)
    design = root[:, None] * (z - w @ z / total)
    response = root * (y - w @ y / total)
    if alpha > 0:
        design = np.concatenate([design, np.sqrt(alpha) * np.eye(z.shape[1])])
        response = np.concatenate([response, np.zeros(z.shape[1])])
    return np.linalg.lstsq(design, response, rcond=None)[0]


@dataclass
class SurrogateMethod(InputMethod):
    """Shared by LIME and KernelSHAP: segment each item, score `n_samples` on/off segment
    vectors (off segments set to the baseline), fit the weighted linear surrogate; a
    position's attribution is its segment's coefficient.

    segments: "windows" (non-overlapping blocks of `window` per axis, None: an eighth of
    each axis; any dimension) or "slic" (images: SLIC superpixels, `n_segments`,
    `compactness`, see segments.slic). Every row uses the same `seed`ed samples (for a
    given number of segments), whatever the batching.
    """

    uses_gradients = False
    alpha = 0.0

    n_samples: int = 1000
    segments: str = "windows"
    window: int | tuple[int, ...] | None = None
    n_segments: int = 50
    compactness: float = 3.0
    baseline: object = 0.0
    seed: int = 0

    def segment(self, item: np.ndarray) -> np.ndarray:
        """Segment labels (*spatial), 0 .. count - 1, of one item (C, *spatial)."""
        spatial = item.shape[1:]
        if self.segments == "windows":
            window = (default_window(spatial) if self.window is None
                      else per_axis(self.window, spatial, "window"))
            return window_segments(spatial, window)
        if self.segments == "slic":
            if len(spatial) != 2:
                raise MethodError(f"segments='slic' is for images; inputs of spatial shape "
                                  f"{spatial} take segments='windows'.")
            return slic(item, self.n_segments, self.compactness)
        raise MethodError(f"segments={self.segments!r} is not 'windows' or 'slic'.")

    def samples(self, count: int) -> np.ndarray:
        """(n_samples, count) 0 / 1: which segments each sample keeps."""
        raise NotImplementedError

    def sample_weights(self, samples: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def passes(self, batch: InputBatch) -> int:
        """Model evaluations: every sample of every row."""
        return len(batch.inputs) * self.n_samples

    def attribute(self, batch: InputBatch) -> np.ndarray:
        x, probe = batch.inputs, batch.probe
        base = baseline_like(self.baseline, x)
        attr = np.empty((len(x), 1, *x.shape[2:]), np.float32)
        for i in range(len(x)):
            labels = self.segment(x[i])
            samples = self.samples(int(labels.max()) + 1)
            scores = np.empty(len(samples), np.float32)
            for start in range(0, len(samples), probe.batch_size):
                keep = samples[start:start + probe.batch_size][:, labels].astype(bool)
                variants = np.where(keep[:, None], x[i], base[i])
                scores[start:start + len(keep)] = probe.input_scores(variants, batch.seeds[i])
            coefficients = fit_linear(samples, scores, self.sample_weights(samples),
                                      self.alpha)
            attr[i, 0] = coefficients[labels]
        return attr


@dataclass
class LIME(SurrogateMethod):
    """Ribeiro et al., KDD 2016, as the lime package's image explainer: the first sample keeps
    every segment, the others keep each with probability 1/2; a sample's weight is
    exp(-d^2 / (2 kernel_width^2)) with d the cosine distance of its on/off vector to
    all-on (1 when all off); ridge with `alpha` (lime's Ridge(alpha=1))."""

    name = "lime"
    scales_input = True

    kernel_width: float = 0.25
    alpha: float = 1.0

    def samples(self, count: int) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        samples = rng.integers(0, 2, (self.n_samples, count)).astype(np.float32)
        samples[0] = 1
        return samples

    def sample_weights(self, samples: np.ndarray) -> np.ndarray:
        kept = samples.sum(axis=1)
        distance = 1 - np.sqrt(kept / samples.shape[1])
        return np.exp(-distance ** 2 / (2 * self.kernel_width ** 2))


@dataclass
class KernelSHAP(SurrogateMethod):
    """Lundberg & Lee, NeurIPS 2017, as Captum's KernelShap: samples all-on, all-off, then k
    segments kept with p(k) proportional to (M - 1) / (k (M - k)), the k chosen uniformly,
    so the Shapley kernel is in the sampling and every sample weighs 1, the two end points
    1e6; unregularised least squares with an intercept."""

    name = "kernelshap"
    aliases = ("kernel-shap", "shap")
    scales_input = True

    def samples(self, count: int) -> np.ndarray:
        if count < 2 or self.n_samples < 2:
            raise MethodError(f"KernelSHAP needs at least 2 segments and n_samples >= 2; got "
                              f"{count} segments, n_samples={self.n_samples}.")
        rng = np.random.default_rng(self.seed)
        sizes = np.arange(1, count)
        chance = (count - 1) / (sizes * (count - sizes))
        kept = rng.choice(sizes, self.n_samples - 2, p=chance / chance.sum())
        samples = np.zeros((self.n_samples, count), np.float32)
        samples[0] = 1
        order = rng.random((self.n_samples - 2, count)).argsort(axis=1)
        samples[2:] = order < kept[:, None]
        return samples

    def sample_weights(self, samples: np.ndarray) -> np.ndarray:
        kept = samples.sum(axis=1)
        return np.where((kept == 0) | (kept == samples.shape[1]), 1e6, 1.0)
