"""How alike two maps are, row by row, over any number of spatial axes."""

from __future__ import annotations

import numpy as np
from scipy import ndimage, stats


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each row of `a` with the same row of `b` (rows, *spatial),
    ties given their average rank; NaN where a row is constant (no ranking to compare)."""
    ra = stats.rankdata(a.reshape(len(a), -1), axis=1)
    rb = stats.rankdata(b.reshape(len(b), -1), axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (ra * rb).sum(1) / np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float = 1.0, sigma: float = 1.5,
         truncate: float = 3.5, k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """Mean structural similarity (Wang et al., IEEE TIP 2004) of each row pair, (rows,).

    Local means, variances and covariance under a Gaussian window (sigma 1.5, 11 samples
    wide: the paper's setting, scikit-image's gaussian_weights=True with
    use_sample_covariance=False) over all spatial axes, reflected at the borders; the mean
    leaves out the window's radius at each border where the axis is long enough.
    Maps in [0, 1] (CAMs) have data_range 1.
    """
    a, b = a.astype(np.float64), b.astype(np.float64)
    spatial = a.ndim - 1

    def local(v):
        return ndimage.gaussian_filter(v, (0,) + (sigma,) * spatial, truncate=truncate,
                                       mode="reflect")

    mu_a, mu_b = local(a), local(b)
    var_a = local(a * a) - mu_a ** 2
    var_b = local(b * b) - mu_b ** 2
    cov = local(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)
             / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
    radius = int(truncate * sigma + 0.5)
    inner = tuple(slice(radius, n - radius) if n > 2 * radius else slice(None)
                  for n in a.shape[1:])
    return index[(slice(None), *inner)].reshape(len(a), -1).mean(axis=1)
