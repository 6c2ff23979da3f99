"""Gradient-free CAMs that weigh channels by how the score reacts to perturbations."""

from __future__ import annotations

import numpy as np

from .. import kernels
from .base import LayerBatch, WeightedChannels


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


class ScoreCAM(WeightedChannels):
    """Wang et al., CVPRW 2020: each channel, upsampled and min-max scaled, masks the input;
    the channel's weight is the softmax over channels of the masked input's score.

    As pytorch-grad-cam, the score is the explained logit (seed . logits) and the masks are
    upsampled with align_corners=True.
    """

    name = "scorecam"
    aliases = ("score-cam",)
    uses_gradients = False
    scales_input = True

    def weights(self, batch: LayerBatch) -> np.ndarray:
        acts, x = batch.activations, batch.inputs
        n, c = acts.shape[:2]
        step = batch.probe.batch_size
        weights = np.empty((n, c), np.float32)
        for i in range(n):
            scores = np.empty(c, np.float32)
            for start in range(0, c, step):
                masks = kernels.resize(acts[i, start:start + step], x.shape[2:],
                                       align_corners=True)
                flat = masks.reshape(len(masks), -1)
                lo, hi = flat.min(axis=1), flat.max(axis=1)
                masks = (masks - _expand(lo, masks)) / (_expand(hi - lo, masks) + 1e-8)
                masked = x[i][None] * masks[:, None]
                scores[start:start + len(masks)] = batch.probe.input_scores(masked,
                                                                            batch.seeds[i])
            weights[i] = _softmax(scores)
        return weights


class AblationCAM(WeightedChannels):
    """Desai & Ramaswamy, WACV 2020: a channel's weight is the relative drop of the score when
    it is ablated. Only the head above the layer is run, once per channel.

    As pytorch-grad-cam, an ablated channel is set to 0 when the item's activations have
    minimum 0 (after ReLU), else to that minimum minus 1e7.
    """

    name = "ablationcam"
    aliases = ("ablation-cam",)
    uses_gradients = False

    def weights(self, batch: LayerBatch) -> np.ndarray:
        acts = batch.activations
        n, c = acts.shape[:2]
        step = batch.probe.batch_size
        weights = np.empty((n, c), np.float32)
        for i in range(n):
            item = acts[i]
            low = item.min()
            fill = 0.0 if low == 0 else low - 1e7
            original = batch.probe.head_scores(batch.layer, item[None], batch.inputs[i],
                                               batch.seeds[i])[0]
            ablated = np.empty(c, np.float32)
            for start in range(0, c, step):
                channels = np.arange(start, min(start + step, c))
                variants = np.repeat(item[None], len(channels), axis=0)
                variants[np.arange(len(channels)), channels] = fill
                ablated[channels] = batch.probe.head_scores(batch.layer, variants,
                                                            batch.inputs[i], batch.seeds[i])
            weights[i] = (original - ablated) / original
        return weights


def _expand(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    return values.reshape(values.shape + (1,) * (like.ndim - 1))
