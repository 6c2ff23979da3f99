"""Gradient-free CAMs whose channel weights come from statistics of the activations, or from
nowhere at all (a random baseline for sanity checks)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .base import LayerBatch, WeightedChannels


@dataclass
class FEM(WeightedChannels):
    """Fuad et al., IPTA 2020 (Feature Explanation Method): a channel's weight is the fraction
    of its positions above its mean + k standard deviations (population std), as
    pytorch-grad-cam's FEM; here in 1D as well as 2D and 3D."""

    name = "fem"
    uses_gradients = False
    uses_target = False
    k: float = 2.0

    def weights(self, batch: LayerBatch) -> np.ndarray:
        a = batch.activations.reshape(*batch.activations.shape[:2], -1)
        threshold = a.mean(axis=2, keepdims=True) + self.k * a.std(axis=2, keepdims=True)
        return (a > threshold).mean(axis=2)


@dataclass
class RandomCAM(WeightedChannels):
    """Channel weights drawn uniformly from [-1, 1] (pytorch-grad-cam's RandomCAM): a baseline
    any real method should beat. Seeded: the same seed and batch size give the same maps."""

    name = "randomcam"
    aliases = ("random-cam", "random")
    uses_gradients = False
    uses_target = False
    seed: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self):
        self._rng = np.random.default_rng(self.seed)

    def weights(self, batch: LayerBatch) -> np.ndarray:
        return self._rng.uniform(-1, 1, batch.activations.shape[:2])
