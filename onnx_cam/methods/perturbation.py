"""Gradient-free CAMs from how the score reacts to perturbed inputs or activations."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import kernels
from .base import CamMethod, LayerBatch, WeightedChannels


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

    def passes(self, batch: LayerBatch) -> int:
        """Model evaluations: every channel's mask on every row."""
        return batch.activations.shape[0] * batch.activations.shape[1]

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

    def passes(self, batch: LayerBatch) -> int:
        """Head evaluations: each row unmodified and with each channel ablated."""
        return batch.activations.shape[0] * (batch.activations.shape[1] + 1)

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


@dataclass
class ReciproCAM(CamMethod):
    """Byun & Lee, "ReciproCAM: lightweight gradient-free CAM", 2022: the map at a position is
    the score when the layer's activations are kept at that position only. Only the head
    above the layer runs, once per position.

    gaussian=True multiplies the activations by the paper's 3 x 3 kernel centred on the
    position (1/4, 1/2, 1/4 per axis, in any dimension; cut at the border) instead of a
    one-hot mask; the authors' code instead copies the position's own feature vector, so
    weighted, over the neighbourhood. The score is the explained logit (seed . logits) as
    for Ablation-CAM, where the authors' code takes the softmax probability; the map is
    that score, signed (not ReLU'd).
    """

    name = "reciprocam"
    aliases = ("recipro-cam",)
    uses_gradients = False

    gaussian: bool = False

    def spatial_masks(self, spatial: tuple[int, ...], positions: np.ndarray) -> np.ndarray:
        """(m, *spatial) masks of the flat `positions` of the layer."""
        per_axis = []
        for size in spatial:
            if self.gaussian:
                per_axis.append(np.eye(size, dtype=np.float32) / 2
                                + np.eye(size, k=1, dtype=np.float32) / 4
                                + np.eye(size, k=-1, dtype=np.float32) / 4)
            else:
                per_axis.append(np.eye(size, dtype=np.float32))
        masks = np.ones(len(positions), np.float32)
        for index, matrix in zip(np.unravel_index(positions, spatial), per_axis):
            masks = masks[..., None] * matrix[index].reshape(
                (len(positions),) + (1,) * (masks.ndim - 1) + (-1,))
        return masks

    def passes(self, batch: LayerBatch) -> int:
        """Head evaluations: every position of every row."""
        return batch.activations[0, 0].size * len(batch.activations)

    def raw(self, batch: LayerBatch, eigen_smooth: bool = False) -> np.ndarray:
        acts, probe = batch.activations, batch.probe
        spatial = acts.shape[2:]
        count = int(np.prod(spatial))
        maps = np.empty((len(acts), count), np.float32)
        for start in range(0, count, probe.batch_size):
            positions = np.arange(start, min(start + probe.batch_size, count))
            masks = self.spatial_masks(spatial, positions)[:, None]
            for i in range(len(acts)):
                maps[i, positions] = probe.head_scores(batch.layer, acts[i][None] * masks,
                                                       batch.inputs[i], batch.seeds[i])
        return maps.reshape(acts.shape[:1] + spatial)


def _expand(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    return values.reshape(values.shape + (1,) * (like.ndim - 1))
