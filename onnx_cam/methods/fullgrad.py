"""FullGrad: the input-gradient term plus the bias-gradient term of every biased layer."""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..errors import MethodError
from .base import InputBatch, InputMethod


def _scaled(maps: np.ndarray) -> np.ndarray:
    """Each (row, channel) map shifted to minimum 0 and divided by 1e-7 + its maximum, as
    pytorch-grad-cam's scale_cam_image."""
    flat = maps.reshape(*maps.shape[:2], -1)
    flat = flat - flat.min(axis=2, keepdims=True)
    return (flat / (1e-7 + flat.max(axis=2, keepdims=True))).reshape(maps.shape)


class FullGrad(InputMethod):
    """Srinivas & Fleuret, NeurIPS 2019, as pytorch-grad-cam 1.5.7 computes it, in 1D, 2D and
    3D: |x * dS/dx| per channel, plus, for every Conv with a bias and every
    BatchNormalization with spatial output, |bias * dS/d output| per channel; each map
    min-max scaled (pytorch-grad-cam's scale_cam_image), the bias maps summed over channels
    and linearly resized to the input (half-pixel centres), all summed: (n, 1, *spatial)."""

    name = "fullgrad"
    aliases = ("full_grad",)

    def attribute(self, batch: InputBatch) -> np.ndarray:
        x = batch.inputs
        if batch.tokens:
            raise MethodError("FullGrad sums channel maps of float inputs; token models take "
                              "saliency, input_x_gradient, integrated_gradients or smoothgrad.")
        grad, biases = batch.bias_gradients(x, batch.seeds)
        total = _scaled(np.abs(grad * x)).sum(axis=1)
        for bias, g in biases:
            if g.ndim != x.ndim:
                raise MethodError(f"FullGrad met a biased layer of rank {g.ndim} in a model "
                                  f"whose input has rank {x.ndim}; it sums maps at the "
                                  "input's resolution only.")
            per_layer = _scaled(np.abs(bias.reshape((1, -1) + (1,) * (g.ndim - 2)) * g)).sum(1)
            if per_layer.shape[1:] != x.shape[2:]:
                per_layer = kernels.resize(per_layer, x.shape[2:])
            total = total + per_layer
        return total[:, None].astype(np.float32)
