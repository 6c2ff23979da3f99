"""Gradients with a modified ReLU backward rule: Guided Backpropagation, Deconvolution and
Guided Grad-CAM (onnx_cam/graph/rules/guided.py holds the rules)."""

from __future__ import annotations

import numpy as np

from .. import kernels
from .base import InputBatch, InputMethod


class GuidedBackprop(InputMethod):
    """Springenberg et al., ICLR workshop 2015: the gradient with every ReLU passing only
    positive gradients where it was active (as Captum's GuidedBackprop)."""

    name = "guided_backprop"
    aliases = ("guided_backpropagation", "guidedbp")
    relu_rule = "guided"

    def attribute(self, batch: InputBatch) -> np.ndarray:
        return batch.gradients(batch.inputs, batch.seeds)


class Deconvolution(InputMethod):
    """Zeiler & Fergus, ECCV 2014: the gradient with every ReLU's backward replaced by a ReLU
    of the incoming gradient (as Captum's Deconvolution)."""

    name = "deconvolution"
    aliases = ("deconvnet",)
    relu_rule = "deconvolution"

    def attribute(self, batch: InputBatch) -> np.ndarray:
        return batch.gradients(batch.inputs, batch.seeds)


def nearest(maps: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """(n, *s) -> (n, *size) by nearest neighbour, as torch's interpolate(mode="nearest"):
    source index floor(i * in / out)."""
    index = [np.minimum(np.floor(np.arange(out, dtype=np.float32) * np.float32(inp / out)),
                        inp - 1).astype(np.int64) for inp, out in zip(maps.shape[1:], size)]
    return maps[np.ix_(np.arange(len(maps)), *index)]


class GuidedGradCAM(InputMethod):
    """Selvaraju et al., ICCV 2017: Guided Backpropagation times the layer's Grad-CAM
    (ReLU of the gradient-mean-weighted channel sum), upsampled to the input by nearest
    neighbour (as Captum's GuidedGradCam). layer: the layer; None takes the explain call's
    layers= (one layer)."""

    name = "guided_gradcam"
    aliases = ("guided_grad_cam",)
    relu_rule = "guided"

    def __init__(self, layer: str | None = None):
        self.layer = layer

    def attribute(self, batch: InputBatch) -> np.ndarray:
        acts, grads = batch.layer_gradients(self.layer)
        cam = kernels.weighted_channel_sum(acts, kernels.spatial_mean(grads))
        guided = batch.gradients(batch.inputs, batch.seeds)
        return guided * nearest(cam, batch.inputs.shape[2:])[:, None]
