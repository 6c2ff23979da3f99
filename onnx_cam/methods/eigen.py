"""EigenCAM: the first principal component of the activations; no gradient, no target."""

from __future__ import annotations

import numpy as np

from .base import CamMethod, LayerBatch, first_component


class EigenCAM(CamMethod):
    """Muhammad & Yeasin, IJCNN 2020. Class-agnostic: the same map for every target."""

    name = "eigencam"
    aliases = ("eigen-cam",)
    uses_gradients = False

    def raw(self, batch: LayerBatch, eigen_smooth: bool = False) -> np.ndarray:
        return np.maximum(first_component(batch.activations), 0)
