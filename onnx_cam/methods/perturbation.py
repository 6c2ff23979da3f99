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


@dataclass
class SSCAM(WeightedChannels):
    """Wang et al., 2020 (Smoothed Score-CAM), as TorchCAM's SSCAM: each channel, min-max
    scaled at the layer (eps 1e-8) and upsampled, plus Gaussian noise of std `std` drawn at
    the input's resolution, masks the input; a channel's weight is the softmax over channels
    of the mean over `samples` noise draws of score(masked) - score(input). Seeded."""

    name = "sscam"
    aliases = ("ss-cam", "smoothscorecam")
    uses_gradients = False
    scales_input = True

    samples: int = 35
    std: float = 2.0
    seed: int = 0

    def passes(self, batch: LayerBatch) -> int:
        """Model evaluations: every channel's mask, `samples` times, on every row, plus the row."""
        return len(batch.activations) * (batch.activations.shape[1] * self.samples + 1)

    def weights(self, batch: LayerBatch) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return _smoothed_score_weights(
            batch, self.samples,
            lambda masks, _: masks + rng.normal(0, self.std, masks.shape).astype(np.float32))


@dataclass
class ISCAM(WeightedChannels):
    """Naidu et al., 2020 (Integrated Score-CAM), as TorchCAM's ISCAM: the masks of SSCAM
    without noise, scaled by c_i = sum_{j <= i} j / samples for i = 1 .. samples; a
    channel's weight is the softmax over channels of the mean of score(c_i mask x) -
    score(x)."""

    name = "iscam"
    aliases = ("is-cam", "integratedscorecam")
    uses_gradients = False
    scales_input = True

    samples: int = 10

    def passes(self, batch: LayerBatch) -> int:
        """Model evaluations: every channel's mask, `samples` times, on every row, plus the row."""
        return len(batch.activations) * (batch.activations.shape[1] * self.samples + 1)

    def weights(self, batch: LayerBatch) -> np.ndarray:
        steps = np.cumsum(np.arange(1, self.samples + 1) / self.samples)
        return _smoothed_score_weights(batch, self.samples,
                                       lambda masks, i: np.float32(steps[i]) * masks)


def _smoothed_score_weights(batch: LayerBatch, samples: int, variant) -> np.ndarray:
    """softmax over channels of mean_i score(variant(masks, i) * x) - score(x), per row; the
    masks are the channels min-max scaled at the layer (TorchCAM's normalisation), then
    upsampled with half-pixel centres. variant is called for sample i = 0 .. samples - 1 with
    every row's masks (n, C, *input_spatial), in that order (the noise draws follow it)."""
    acts, x, probe = batch.activations, batch.inputs, batch.probe
    n, c = acts.shape[:2]
    flat = acts.reshape(n, c, -1)
    low = flat.min(axis=2, keepdims=True)
    scaled = (flat - low) / (flat.max(axis=2, keepdims=True) - low + 1e-8)
    masks = kernels.resize(scaled.reshape(n * c, *acts.shape[2:]), x.shape[2:])
    masks = masks.reshape(n, c, *x.shape[2:])
    original = (probe.logits(x) * batch.seeds).sum(axis=1)
    totals = np.zeros((n, c), np.float64)
    for i in range(samples):
        varied = variant(masks, i)
        for row in range(n):
            masked = x[row][None] * varied[row][:, None]
            totals[row] += probe.input_scores(masked, batch.seeds[row]) - original[row]
    return np.stack([_softmax(t / samples) for t in totals]).astype(np.float32)


class AblationCAM(WeightedChannels):
    """Desai & Ramaswamy, WACV 2020: a channel's weight is the relative drop of the score when
    it is ablated. Only the head above the layer is run, once per channel.

    As pytorch-grad-cam, an ablated channel is set to 0 when the item's activations have
    minimum 0 (after ReLU), else to that minimum minus 1e7. On a token layer (ViT, DeiT) the
    head is fed the token tensor with the channel ablated at every token, prefix tokens
    included, and the minimum is taken over them too (pytorch-grad-cam's AblationLayerVit).
    """

    name = "ablationcam"
    aliases = ("ablation-cam",)
    uses_gradients = False

    def passes(self, batch: LayerBatch) -> int:
        """Head evaluations: each row unmodified and with each channel ablated."""
        return batch.activations.shape[0] * (batch.activations.shape[1] + 1)

    def weights(self, batch: LayerBatch) -> np.ndarray:
        n, c = batch.activations.shape[:2]
        probe, step = batch.probe, batch.probe.batch_size
        weights = np.empty((n, c), np.float32)
        for i in range(n):
            item, axis = probe.head_feed(batch.layer, batch.activations[i], batch.inputs[i])
            low = item.min()
            fill = 0.0 if low == 0 else low - 1e7
            original = probe.head_scores(batch.layer, item[None], batch.inputs[i],
                                         batch.seeds[i], as_fed=True)[0]
            ablated = np.empty(c, np.float32)
            for start in range(0, c, step):
                channels = np.arange(start, min(start + step, c))
                variants = np.repeat(item[None], len(channels), axis=0)
                np.moveaxis(variants, axis + 1, 1)[np.arange(len(channels)), channels] = fill
                ablated[channels] = probe.head_scores(batch.layer, variants, batch.inputs[i],
                                                      batch.seeds[i], as_fed=True)
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
    that score, signed (not ReLU'd). On a token layer (ViT, DeiT) the prefix tokens (class,
    distillation, register tokens) are kept whole, as ViT-ReciproCAM's (Byun & Lee, 2023)
    cls_token=True, and the grid tokens are masked.
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
        feeds = [probe.head_feed(batch.layer, acts[i], batch.inputs[i])[0]
                 for i in range(len(acts))]
        maps = np.empty((len(acts), count), np.float32)
        for start in range(0, count, probe.batch_size):
            positions = np.arange(start, min(start + probe.batch_size, count))
            masks = probe.head_feed_masks(batch.layer, self.spatial_masks(spatial, positions))
            for i, feed in enumerate(feeds):
                maps[i, positions] = probe.head_scores(batch.layer, feed[None] * masks,
                                                       batch.inputs[i], batch.seeds[i],
                                                       as_fed=True)
        return maps.reshape(acts.shape[:1] + spatial)


def _expand(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    return values.reshape(values.shape + (1,) * (like.ndim - 1))
