"""Rollout maps of vision transformers from their attention probabilities (onnx_cam.rollout)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import kernels
from ..errors import MethodError
from .base import InputBatch, InputMethod

FUSIONS = {"mean": np.mean, "max": np.max, "min": np.min}


def _fuse(attention: np.ndarray, fusion: str) -> np.ndarray:
    if fusion not in FUSIONS:
        raise MethodError(f"head_fusion={fusion!r} is not one of {sorted(FUSIONS)}.")
    return FUSIONS[fusion](attention.astype(np.float64), axis=1)


def _as_map(rollout: np.ndarray, found, inputs: np.ndarray) -> np.ndarray:
    """The first prefix token's row over the grid tokens, upsampled to (n, 1, *spatial)
    (the first token's own row: the grid itself when there is no prefix token)."""
    n = len(rollout)
    grid_map = rollout[:, 0, found.prefix:].reshape(n, *found.grid).astype(np.float32)
    return kernels.resize(grid_map, inputs.shape[2:])[:, None]


@dataclass
class AttentionRollout(InputMethod):
    """Abnar & Zuidema, ACL 2020, as the common implementation (jacobgil's vit-explain):
    per block, the heads fused (`head_fusion` mean, max or min), the `discard_ratio` lowest
    entries of each item's fused matrix set to 0 (never the first token's attention to
    itself), A = (fused + I) / 2 with its rows scaled to sum 1; the rollout is the product of
    the blocks' A, last block first. The map is the first token's row over the grid tokens.
    Needs no target and no gradient."""

    name = "attention_rollout"
    aliases = ("rollout", "attentionrollout")
    uses_gradients = False
    input_gradients = False

    head_fusion: str = "mean"
    discard_ratio: float = 0.9

    def attribute(self, batch: InputBatch) -> np.ndarray:
        if not 0 <= self.discard_ratio < 1:
            raise MethodError(f"discard_ratio must be in [0, 1); got {self.discard_ratio!r}.")
        found, attentions, _ = batch.attention(batch.inputs, batch.seeds, False)
        n, tokens = len(batch.inputs), attentions[0].shape[-1]
        eye = np.eye(tokens)
        result = np.broadcast_to(eye, (n, tokens, tokens))
        for attention in attentions:
            fused = _fuse(attention, self.head_fusion).reshape(n, -1)
            lowest = np.argsort(fused, axis=1, kind="stable")[
                :, :int(tokens * tokens * self.discard_ratio)]
            for row, drop in zip(fused, lowest):
                row[drop[drop != 0]] = 0
            a = (fused.reshape(n, tokens, tokens) + eye) / 2
            a /= a.sum(axis=-1, keepdims=True)
            result = a @ result
        return _as_map(result, found, batch.inputs)


@dataclass
class GradientRollout(InputMethod):
    """Chefer, Gur & Wolf, ICCV 2021 ("Generic Attention-model Explainability"), eq. 5-6:
    R = I, and per block, in order, R += mean over heads of ReLU(dscore/dA * A) @ R, with A
    the block's attention probabilities and the score the target's (as every gradient
    method's). The map is the first token's row over the grid tokens. `head_fusion` max or
    min replace the mean over heads."""

    name = "gradient_rollout"
    aliases = ("gradientrollout", "chefer")
    input_gradients = False

    head_fusion: str = "mean"

    def attribute(self, batch: InputBatch) -> np.ndarray:
        found, attentions, gradients = batch.attention(batch.inputs, batch.seeds, True)
        n, tokens = len(batch.inputs), attentions[0].shape[-1]
        relevance = np.broadcast_to(np.eye(tokens), (n, tokens, tokens)).copy()
        for attention, gradient in zip(attentions, gradients):
            weighted = np.maximum(gradient.astype(np.float64) * attention, 0)
            relevance += _fuse(weighted, self.head_fusion) @ relevance
        return _as_map(relevance, found, batch.inputs)
