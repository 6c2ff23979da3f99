"""RISE: the score under random smooth masks, averaged with the masks as weights."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import kernels
from ..errors import MethodError
from .base import InputBatch, InputMethod
from .masking import per_axis


@dataclass
class RISE(InputMethod):
    """Petsiuk et al., BMVC 2018. Masks: binary grids of `cells` per axis, each cell on with
    probability `p`, upsampled (linear / bilinear / trilinear, half-pixel centres) to
    (cells + 1) cells of ceil(size / cells) samples and cropped at a random shift of less
    than one cell. Saliency = sum_i f(x * M_i) M_i / (n_masks * p); every row uses the
    same `seed`ed masks, whatever the batching.
    """

    name = "rise"
    uses_gradients = False
    scales_input = True

    n_masks: int = 4000
    cells: int | tuple[int, ...] = 7
    p: float = 0.5
    seed: int = 0

    def grids(self, spatial: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """The binary grids (n_masks, *cells) and each mask's crop offsets (n_masks, axes)."""
        if not 0 < self.p <= 1 or self.n_masks < 1:
            raise MethodError(f"RISE needs 0 < p <= 1 and n_masks >= 1; got p={self.p}, "
                              f"n_masks={self.n_masks}.")
        cells = per_axis(self.cells, spatial, "cells")
        rng = np.random.default_rng(self.seed)
        grids = (rng.random((self.n_masks, *cells)) < self.p).astype(np.float32)
        shifts = rng.integers(0, self._cell(spatial, cells), (self.n_masks, len(spatial)))
        return grids, shifts

    @staticmethod
    def _cell(spatial, cells) -> tuple[int, ...]:
        return tuple(math.ceil(s / c) for s, c in zip(spatial, cells))

    def masks(self, grids: np.ndarray, shifts: np.ndarray,
              spatial: tuple[int, ...]) -> np.ndarray:
        """The masks (m, *spatial) of m grids and their shifts."""
        cells = grids.shape[1:]
        upsampled = kernels.resize(grids, tuple((c + 1) * k for c, k in
                                                zip(cells, self._cell(spatial, cells))))
        return np.stack([up[tuple(slice(a, a + s) for a, s in zip(shift, spatial))]
                         for up, shift in zip(upsampled, shifts)])

    def passes(self, batch: InputBatch) -> int:
        """Model evaluations: every mask on every row."""
        return len(batch.inputs) * self.n_masks

    def attribute(self, batch: InputBatch) -> np.ndarray:
        x, probe = batch.inputs, batch.probe
        spatial = x.shape[2:]
        grids, shifts = self.grids(spatial)
        saliency = np.zeros((len(x), math.prod(spatial)), np.float64)
        for start in range(0, self.n_masks, probe.batch_size):
            stop = start + probe.batch_size
            masks = self.masks(grids[start:stop], shifts[start:stop], spatial)
            flat = masks.reshape(len(masks), -1)
            for i in range(len(x)):
                scores = probe.input_scores(x[i][None] * masks[:, None], batch.seeds[i])
                saliency[i] += scores.astype(np.float64) @ flat
        saliency /= self.n_masks * self.p
        return saliency.astype(np.float32).reshape((len(x), 1, *spatial))
