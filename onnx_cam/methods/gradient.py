"""Gradient-based CAMs: a layer's activations weighted by the score's gradient."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import kernels
from .base import CamMethod, ElementwiseChannels, LayerBatch, WeightedChannels, first_component


def _spatial_sum(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], x.shape[1], -1).sum(axis=2)


def _per_channel(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    return values.reshape(values.shape + (1,) * (like.ndim - 2))


class GradCAM(WeightedChannels):
    """Selvaraju et al., ICCV 2017: weights are the spatial mean of the gradient."""

    name = "gradcam"
    aliases = ("grad-cam",)

    def weights(self, batch: LayerBatch) -> np.ndarray:
        return kernels.spatial_mean(batch.gradients)


class ShapleyCAM(WeightedChannels):
    """Cai et al., 2025 (arXiv 2501.06261), as pytorch-grad-cam's ShapleyCAM: weights are the
    spatial mean of g - H A / 2, the gradient minus half the Hessian of the score at the layer
    times the activations. The Hessian-vector product is exact (the gradient subgraph is
    differentiated again); the paper pairs it with score="rest". On a ReLU network explaining
    logits H A is zero and ShapleyCAM is Grad-CAM."""

    name = "shapleycam"
    aliases = ("shapley-cam",)
    uses_hvp = True

    def weights(self, batch: LayerBatch) -> np.ndarray:
        return kernels.spatial_mean(batch.gradients - 0.5 * batch.hvp)


class GradCAMPlusPlus(WeightedChannels):
    """Chattopadhay et al., WACV 2018: positive gradients weighted by alpha (their eq. 19)."""

    name = "gradcam++"
    aliases = ("gradcampp", "gradcamplusplus")

    def weights(self, batch: LayerBatch) -> np.ndarray:
        g, a = batch.gradients, batch.activations
        g2 = g * g
        denominator = 2 * g2 + _per_channel(_spatial_sum(a), a) * g2 * g + 1e-6
        alpha = np.where(g != 0, g2 / denominator, 0)
        return _spatial_sum(np.maximum(g, 0) * alpha)


@dataclass
class SmoothGradCAMPlusPlus(WeightedChannels):
    """Omeiza et al., 2019: Grad-CAM++ with the gradient's first, second and third powers
    each averaged over `samples` copies of the input plus Gaussian noise of std `std`
    (seeded): alpha = mean g^2 / (2 mean g^2 + sum(A) mean g^3), weight = sum_positions
    alpha ReLU(mean g), A the noise-free activations: the paper's, and our Grad-CAM++ (eq. 19
    of its paper, as pytorch-grad-cam) when samples=1 and std=0. TorchCAM's SmoothGradCAMpp
    differs: sum(A mean g^3) in alpha, ReLU of the last noisy gradient and the last noisy
    activations. One more gradient run per sample."""

    name = "smoothgradcam++"
    aliases = ("smoothgradcampp", "smooth-grad-cam++")
    scales_input = True  # adds noise to the input values: not for token ids

    samples: int = 4
    std: float = 0.3
    seed: int = 0

    def passes(self, batch: LayerBatch) -> int:
        """Gradient runs over the rows: the noise-free one and one per sample."""
        return len(batch.inputs) * (self.samples + 1)

    def weights(self, batch: LayerBatch) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        x, a = batch.inputs, batch.activations
        powers = [np.zeros_like(a, np.float64) for _ in range(3)]
        for _ in range(self.samples):
            noisy = x + rng.normal(0, self.std, x.shape).astype(np.float32)
            g = batch.rerun(noisy)[1].astype(np.float64)
            for k, total in enumerate(powers, start=1):
                total += g ** k
        mean, square, cube = (p / self.samples for p in powers)
        denominator = 2 * square + _per_channel(_spatial_sum(a), a) * cube
        alpha = np.where(square != 0, square / np.where(denominator != 0, denominator, 1), 0)
        return _spatial_sum(alpha * np.maximum(mean, 0))


class XGradCAM(WeightedChannels):
    """Fu et al., BMVC 2020: gradients weighted by the normalised activations."""

    name = "xgradcam"
    aliases = ("xgrad-cam",)

    def weights(self, batch: LayerBatch) -> np.ndarray:
        g, a = batch.gradients, batch.activations
        return _spatial_sum(g * a / (_per_channel(_spatial_sum(a), a) + 1e-7))


class HiResCAM(ElementwiseChannels):
    """Draelos & Carin, 2020: the element-wise product of gradient and activation, summed."""

    name = "hirescam"
    aliases = ("hires-cam",)

    def elementwise(self, batch: LayerBatch) -> np.ndarray:
        return batch.gradients * batch.activations

    def raw(self, batch: LayerBatch, eigen_smooth: bool = False) -> np.ndarray:
        if eigen_smooth:
            return super().raw(batch, eigen_smooth)
        return kernels.elementwise_channel_sum(batch.activations, batch.gradients)


class GradCAMElementWise(ElementwiseChannels):
    """pytorch-grad-cam's element-wise Grad-CAM: ReLU of gradient x activation, then summed."""

    name = "gradcamelementwise"
    aliases = ("gradcam-elementwise",)

    def elementwise(self, batch: LayerBatch) -> np.ndarray:
        return np.maximum(batch.gradients * batch.activations, 0)


class LayerCAM(ElementwiseChannels):
    """Jiang et al., IEEE TIP 2021: activations weighted by the positive gradient, per position."""

    name = "layercam"
    aliases = ("layer-cam",)

    def elementwise(self, batch: LayerBatch) -> np.ndarray:
        return np.maximum(batch.gradients, 0) * batch.activations


class EigenGradCAM(CamMethod):
    """First principal component of gradient x activation (pytorch-grad-cam's EigenGradCAM)."""

    name = "eigengradcam"
    aliases = ("eigen-grad-cam",)

    def raw(self, batch: LayerBatch, eigen_smooth: bool = False) -> np.ndarray:
        return np.maximum(first_component(batch.gradients * batch.activations), 0)
