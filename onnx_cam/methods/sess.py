"""SESS: Saliency Enhancing with Scaling and Sliding (Tursun et al., 2022), around any CAM.

The input is resized to several scales; a window slides over each; every patch is explained
by the base method and weighted by its own score; the weighted patch maps are pasted back and
averaged where they cover a position. As pytorch-grad-cam 1.5.7's SESS, in 1D, 2D and 3D.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .. import kernels
from ..errors import MethodError
from .base import CamMethod

# explain(patches, rows) -> (P, *window) cams of the base method for the patches cut from the
# given rows' items; score(patches, rows) -> (P,) the explained score of each patch
ExplainPatches = Callable[[np.ndarray, np.ndarray], np.ndarray]
ScorePatches = Callable[[np.ndarray, np.ndarray, bool], np.ndarray]


@dataclass
class SESS(CamMethod):
    """A meta-method: `base` explains every patch (a name or a configured method).

    window: the patch size (default: the input's smallest side, so the first scale is the
    input itself); scales: the sizes the smallest side is resized to (default: num_scales of
    them, window + round(scale_step_ratio * window) * i); step: the window's stride
    (default: the window; windows crossing the far border are moved back inside). A patch's
    weight is its score (softmax probability of the explained class, or the raw score with
    use_softmax_scores=False), clipped at 0 and divided by the best; pre_filter_ratio drops
    the lowest-scoring share first. pool "mean": each position averages the pasted maps above
    theta; "max": their maximum. smooth: a Gaussian blur (sigma 5, radius 5; cv2's
    GaussianBlur((11, 11), 5) with mirrored borders)."""

    name = "sess"
    level = "meta"
    uses_gradients = False

    base: str | CamMethod = "gradcam"
    scales: tuple[int, ...] | None = None
    num_scales: int = 12
    scale_step_ratio: float = 2.0 / 7.0
    window: int | None = None
    step: int | None = None
    pre_filter_ratio: float = 0.0
    theta: float = 0.0
    pool: str = "mean"
    smooth: bool = True
    use_softmax_scores: bool = True

    def __post_init__(self):
        if self.pool not in ("mean", "max"):
            raise MethodError(f"SESS pool={self.pool!r} is not 'mean' or 'max'.")
        if not 0 <= self.pre_filter_ratio < 1 or self.num_scales < 1:
            raise MethodError("SESS needs 0 <= pre_filter_ratio < 1 and num_scales >= 1.")

    def fused(self, items: np.ndarray, explain: ExplainPatches,
              score: ScorePatches) -> np.ndarray:
        """(n, *spatial) fused maps of `items` (n, C, *spatial), before the final scaling."""
        spatial = items.shape[2:]
        window = self.window or min(spatial)
        step = self.step or window
        out = np.empty((len(items), *spatial), np.float32)
        for i, item in enumerate(items):
            patches, places = self._patches(item, window, step)
            rows = np.full(len(patches), i)
            scores = np.maximum(score(patches, rows, self.use_softmax_scores), 0)
            order = np.argsort(scores, kind="stable")[int(len(scores) * self.pre_filter_ratio):]
            best = scores[order[-1]]
            weights = scores[order] / best if best > 0 else np.ones(len(order), np.float32)
            cams = explain(patches[order], rows[order])
            out[i] = self._fuse(cams, weights, [places[k] for k in order], spatial)
            if self.smooth:
                out[i] = ndimage.gaussian_filter(out[i], 5.0, truncate=1.0, mode="mirror")
        return out

    def _scales(self, window: int) -> list[int]:
        if self.scales is not None:
            if min(self.scales) < window:
                raise MethodError(f"SESS scales {self.scales} must be at least the window "
                                  f"({window}).")
            return list(self.scales)
        step = int(round(window * self.scale_step_ratio))
        return [window + step * i for i in range(self.num_scales)]

    def _patches(self, item: np.ndarray, window: int, step: int):
        """The patches (P, C, *window) of every scale, and where each was cut from: (the
        scaled shape, the patch's corner)."""
        spatial = item.shape[1:]
        patches, places = [], []
        for scale in self._scales(window):
            # the smallest side becomes `scale`, the others in proportion (truncated)
            shape = tuple(scale if s == min(spatial) else int(scale * s / min(spatial))
                          for s in spatial)
            scaled = kernels.resize(item, shape)
            for corner in itertools.product(*(_starts(s, step, window) for s in shape)):
                cut = tuple(slice(c, c + window) for c in corner)
                patches.append(scaled[(slice(None), *cut)])
                places.append((shape, cut))
        return np.stack(patches), places

    def _fuse(self, cams: np.ndarray, weights: np.ndarray, places, spatial) -> np.ndarray:
        total = np.zeros(spatial, np.float32)
        counts = np.zeros(spatial, np.float32)
        for cam, weight, (shape, cut) in zip(cams, weights, places):
            full = np.zeros(shape, np.float32)
            full[cut] = cam * np.float32(weight)
            pasted = kernels.resize(full[None], spatial)[0]
            if self.pool == "max":
                np.maximum(total, pasted, out=total)
            else:
                above = pasted > self.theta
                total[above] += pasted[above]
                counts += above
        if self.pool == "max":
            return total
        return np.divide(total, counts, out=np.zeros_like(total), where=counts > 0)


def _starts(length: int, step: int, window: int) -> list[int]:
    """Window starts along one axis; the last window is moved back inside the border."""
    starts = []
    for start in range(0, length, step):
        if start + window >= length:
            starts.append(max(length - window, 0))
            break
        starts.append(start)
    return starts
