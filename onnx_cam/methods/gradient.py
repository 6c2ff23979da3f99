"""Gradient-based CAMs: a layer's activations weighted by the score's gradient."""

from __future__ import annotations

import numpy as np

from .. import kernels
from .base import CamMethod


class GradCAM(CamMethod):
    """Selvaraju et al. 2017: channel weights are the spatial mean of the gradient."""

    name = "gradcam"
    aliases = ("grad-cam",)

    def raw(self, activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        return kernels.weighted_channel_sum(activations, kernels.spatial_mean(gradients))


class HiResCAM(CamMethod):
    """Draelos & Carin 2020: the element-wise product of gradient and activation, summed."""

    name = "hirescam"
    aliases = ("hires-cam",)

    def raw(self, activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        return kernels.elementwise_channel_sum(activations, gradients)
