"""Input attributions from the score's gradient at the input: saliency, input x gradient,
integrated gradients and the noise tunnel (SmoothGrad, SmoothGrad-squared, VarGrad).

Definitions follow Captum 0.9 (checked against it in tests/test_attributions.py).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import MethodError
from .base import InputBatch, InputMethod


class Saliency(InputMethod):
    """Simonyan et al., ICLR workshop 2014: |d score / d x| (absolute=False: signed)."""

    name = "saliency"
    aliases = ("vanilla_gradient",)

    def __init__(self, absolute: bool = True):
        self.absolute = absolute

    def attribute(self, batch: InputBatch) -> np.ndarray:
        grad = batch.gradients(batch.inputs, batch.seeds)
        return np.abs(grad) if self.absolute else grad


class InputXGradient(InputMethod):
    """Shrikumar et al., 2016: x * d score / d x."""

    name = "input_x_gradient"
    aliases = ("inputxgradient", "gradient_x_input")

    def attribute(self, batch: InputBatch) -> np.ndarray:
        return batch.inputs * batch.gradients(batch.inputs, batch.seeds)


def _riemann(kind: str):
    def rule(n: int) -> tuple[np.ndarray, np.ndarray]:
        if n < 2:
            raise MethodError(f"riemann_{kind} needs n_steps >= 2; got {n}.")
        weights = np.full(n, 1.0 / n)
        if kind == "trapezoid":
            weights[[0, -1]] /= 2
        start, stop = {"left": (0, 1 - 1 / n), "right": (1 / n, 1),
                       "middle": (1 / (2 * n), 1 - 1 / (2 * n)), "trapezoid": (0, 1)}[kind]
        return np.linspace(start, stop, n), weights
    return rule


def _gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    points, weights = np.polynomial.legendre.leggauss(n)
    return 0.5 * (1 + points), 0.5 * weights


#: integration rules: n_steps -> (alphas in [0, 1], step weights), as Captum 0.9 defines them
QUADRATURES = {"gausslegendre": _gauss_legendre,
               **{f"riemann_{k}": _riemann(k) for k in ("left", "right", "middle", "trapezoid")}}


class IntegratedGradients(InputMethod):
    """Sundararajan et al., ICML 2017: (x - b) times the gradient integrated along the straight
    path from the baseline b to x, by a quadrature of n_steps points (method: "gausslegendre",
    Captum's default, or "riemann_left" / "_right" / "_middle" / "_trapezoid").

    baseline: "zeros"; a number (a constant input); an array, one channels-first item
    (C, *spatial) for every row or (N, C, *spatial) one per input item; "blur" (each item
    blurred with a Gaussian of blur_sigma positions along its spatial axes); "uniform"
    (uniform noise between the item's minimum and maximum, seeded by `seed` and the row).
    Reports info["completeness_gap"] = sum(attribution) - (f(x) - f(b)) per row.
    """

    name = "integrated_gradients"
    aliases = ("ig",)

    def __init__(self, n_steps: int = 50, method: str = "gausslegendre", baseline="zeros",
                 blur_sigma: float = 5.0, seed: int = 0):
        if method not in QUADRATURES:
            raise MethodError(f"method={method!r} is not one of {sorted(QUADRATURES)}.")
        if n_steps < 1:
            raise MethodError(f"n_steps must be >= 1; got {n_steps}.")
        if isinstance(baseline, str) and baseline not in ("zeros", "blur", "uniform"):
            raise MethodError(f"baseline={baseline!r}: give 'zeros', 'blur', 'uniform', a "
                              "number or an array.")
        self.alphas, self.weights = QUADRATURES[method](n_steps)
        self.n_steps, self.method, self.baseline = n_steps, method, baseline
        self.blur_sigma, self.seed = blur_sigma, seed

    def inputs_per_row(self) -> int:
        return self.n_steps

    def attribute(self, batch: InputBatch) -> np.ndarray:
        x, seeds = batch.inputs, batch.seeds
        base = baseline_for(self.baseline, batch, self.blur_sigma, self.seed)
        delta = x - base
        alphas = self.alphas.astype(np.float32).reshape((-1,) + (1,) * x.ndim)
        path = (base[None] + alphas * delta[None]).reshape(-1, *x.shape[1:])
        grads = batch.gradients(path, np.tile(seeds, (self.n_steps, 1)))
        total = np.tensordot(self.weights, grads.reshape(self.n_steps, *x.shape), axes=1)
        attribution = (total * delta).astype(np.float32)
        ends = batch.scores(np.concatenate([x, base]), np.tile(seeds, (2, 1)))
        change = ends[:len(x)].astype(np.float64) - ends[len(x):]
        batch.info["completeness_gap"] = attribution.reshape(len(x), -1).sum(
            axis=1, dtype=np.float64) - change
        return attribution


def baseline_for(baseline, batch: InputBatch, blur_sigma: float, seed: int) -> np.ndarray:
    """The baseline of each row, shaped like batch.inputs."""
    x = batch.inputs
    if isinstance(baseline, str):
        if baseline == "zeros":
            return np.zeros_like(x)
        if baseline == "blur":
            if batch.tokens:
                raise MethodError("A blurred baseline needs spatial inputs; token models take "
                                  "'zeros', 'uniform', a number or an array of embeddings.")
            sigma = (0, 0) + (blur_sigma,) * (x.ndim - 2)
            return ndimage.gaussian_filter(x, sigma).astype(np.float32)
        out = np.empty_like(x)
        for i, row in enumerate(batch.rows):
            low, high = x[i].min(), x[i].max()
            out[i] = np.random.default_rng([seed, int(row)]).uniform(low, high, x.shape[1:])
        return out
    values = np.asarray(baseline, np.float32)
    if values.ndim == x.ndim:  # one baseline per input item
        values = values[batch.items]
    try:
        return np.broadcast_to(values, x.shape).astype(np.float32)
    except ValueError:
        raise MethodError(f"A baseline array must be one item {x.shape[1:]} or one per input "
                          f"item (N, {', '.join(map(str, x.shape[1:]))}), channels first; got "
                          f"{values.shape}.") from None


class SmoothGrad(InputMethod):
    """Smilkov et al., 2017: the gradient averaged over nt_samples noisy copies of the input,
    x + N(0, stdevs^2) (stdevs in input units, as Captum's NoiseTunnel). absolute=True
    averages |gradient| (Captum's NoiseTunnel(Saliency(model)) default).

    noise: an explicit (rows, nt_samples, *item) array for the whole call (rows as in the
    result); else Gaussian noise seeded by `seed` and each row's index, the same whatever
    the batch size.
    """

    name = "smoothgrad"
    nt_type = "smoothgrad"

    def __init__(self, nt_samples: int = 5, stdevs: float = 1.0, seed: int = 0, noise=None,
                 absolute: bool = False):
        if nt_samples < 1:
            raise MethodError(f"nt_samples must be >= 1; got {nt_samples}.")
        self.nt_samples, self.stdevs, self.seed = nt_samples, float(stdevs), seed
        self.noise = None if noise is None else np.asarray(noise, np.float32)
        self.absolute = absolute

    def inputs_per_row(self) -> int:
        return self.nt_samples

    def _noise(self, batch: InputBatch) -> np.ndarray:
        shape = (self.nt_samples, *batch.inputs.shape[1:])
        if self.noise is not None:
            if self.noise.shape[1:] != shape:
                raise MethodError(f"noise must be shaped (rows, {', '.join(map(str, shape))}); "
                                  f"got {self.noise.shape}.")
            return self.noise[batch.rows]
        return np.stack([np.random.default_rng([self.seed, int(row)]).normal(
            0.0, self.stdevs, shape) for row in batch.rows]).astype(np.float32)

    def attribute(self, batch: InputBatch) -> np.ndarray:
        x, k = batch.inputs, self.nt_samples
        noisy = (x[:, None] + self._noise(batch)).reshape(-1, *x.shape[1:])
        grads = batch.gradients(noisy, np.repeat(batch.seeds, k, axis=0))
        grads = grads.reshape(len(x), k, *x.shape[1:]).astype(np.float64)
        if self.absolute:
            grads = np.abs(grads)
        mean, mean_sq = grads.mean(axis=1), (grads * grads).mean(axis=1)
        out = {"smoothgrad": mean, "smoothgrad_sq": mean_sq,
               "vargrad": mean_sq - mean * mean}[self.nt_type]
        return out.astype(np.float32)


class SmoothGradSquared(SmoothGrad):
    """Hooker et al., NeurIPS 2019: the mean of the squared noisy gradients."""

    name = "smoothgrad_sq"
    aliases = ("smoothgrad_squared",)
    nt_type = "smoothgrad_sq"


class VarGrad(SmoothGrad):
    """Adebayo et al., 2018: the variance of the noisy gradients."""

    name = "vargrad"
    nt_type = "vargrad"
