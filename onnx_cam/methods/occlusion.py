"""Occlusion: the drop of the score when a sliding window of the input is replaced."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from ..errors import MethodError
from .base import InputBatch, InputMethod
from .masking import baseline_like, default_window, per_axis


def explained_scores(batch: InputBatch) -> np.ndarray:
    """seed . logits of each row's unmodified input, (n,), one batched run."""
    return (batch.probe.logits(batch.inputs) * batch.seeds).sum(axis=1)


@dataclass
class Occlusion(InputMethod):
    """Zeiler & Fergus, ECCV 2014, as Captum's Occlusion with a window spanning all channels.

    Windows start at 0 and move by `strides` along every spatial axis until the axis is
    covered (the last one may be cut by the border). A position's attribution is the mean,
    over the windows covering it, of f(x) - f(x with the window set to the baseline).
    window: an int for every axis or one per axis; None: an eighth of each axis.
    strides: likewise; None: half the window. baseline: see masking.baseline_like.
    """

    name = "occlusion"
    uses_gradients = False
    scales_input = True

    window: int | tuple[int, ...] | None = None
    strides: int | tuple[int, ...] | None = None
    baseline: object = 0.0

    def windows(self, spatial: tuple[int, ...]) -> list[tuple[slice, ...]]:
        """The occluded regions, one tuple of per-axis slices each."""
        window = (default_window(spatial) if self.window is None
                  else per_axis(self.window, spatial, "window"))
        strides = (tuple(max(1, w // 2) for w in window) if self.strides is None
                   else per_axis(self.strides, spatial, "strides"))
        if any(w > s for w, s in zip(window, spatial)):
            raise MethodError(f"The occlusion window {window} exceeds the input's spatial "
                              f"shape {spatial}; choose a smaller window.")
        if any(st > w and w < s for st, w, s in zip(strides, window, spatial)):
            raise MethodError(f"Strides {strides} larger than the window {window} would leave "
                              "positions unoccluded; use strides <= window.")
        starts = [range(0, (math.ceil((s - w) / st) + 1) * st, st)
                  for s, w, st in zip(spatial, window, strides)]
        return [tuple(slice(a, a + w) for a, w in zip(corner, window))
                for corner in itertools.product(*starts)]

    def passes(self, batch: InputBatch) -> int:
        """Model evaluations: every window of every row, plus each unmodified row."""
        return len(batch.inputs) * (len(self.windows(batch.inputs.shape[2:])) + 1)

    def attribute(self, batch: InputBatch) -> np.ndarray:
        x, probe = batch.inputs, batch.probe
        spatial = x.shape[2:]
        windows = self.windows(spatial)
        base = baseline_like(self.baseline, x)
        full = explained_scores(batch)
        covered = np.zeros(spatial, np.float32)
        for region in windows:
            covered[region] += 1
        attr = np.zeros((len(x), 1, *spatial), np.float32)
        # (row, window) pairs, run batch_size at a time across rows
        jobs = [(i, region) for i in range(len(x)) for region in windows]
        for start in range(0, len(jobs), probe.batch_size):
            chunk = jobs[start:start + probe.batch_size]
            rows = np.array([i for i, _ in chunk])
            variants = x[rows]
            for variant, (i, region) in zip(variants, chunk):
                variant[(slice(None), *region)] = base[i][(slice(None), *region)]
            occluded = (probe.logits(variants) * batch.seeds[rows]).sum(axis=1)
            for drop, (i, region) in zip(full[rows] - occluded, chunk):
                attr[i, 0][region] += drop
        return attr / covered
