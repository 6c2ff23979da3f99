"""The planted models (tests of faithfulness, localisation and randomisation metrics): the
evidence for class 1 is known to lie in one region (samples 100-199 of a 300-sample signal,
the top-right quadrant of a 32 x 32 image), and the explained layer also holds distractor
channels that respond everywhere but that the head ignores. Grad-CAM weights only the
channels the head reads; RandomCAM's random channel weights mix in the distractors."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import onnx_cam
from onnx_cam.methods import RandomCAM
from onnx_cam.metrics import evaluate

LAYER = "1"     # the explained layer: the ReLU after the convolution, before the gate


class Gate(nn.Module):
    """Multiplies by a fixed 0 / 1 mask: only the region reaches the score."""

    def __init__(self, mask: np.ndarray):
        super().__init__()
        self.register_buffer("mask", torch.from_numpy(mask.astype(np.float32))[None, None])

    def forward(self, h):
        return h * self.mask


def planted_region(dims: int) -> np.ndarray:
    if dims == 1:
        return np.r_[np.zeros(100), np.ones(100), np.zeros(100)].astype(bool)
    region = np.zeros((32, 32), bool)
    region[:16, 16:] = True
    return region


def planted_model(region: np.ndarray) -> nn.Sequential:
    """Two input channels, 8 feature channels (layer "1"): 0-3 smooth input channel 0, 4-7
    filter channel 1 with fixed random kernels (strong responses everywhere); only channels
    0-3 inside `region` reach class 1's logit (head weights 0 for 4-7, the gate cuts the
    rest before the pooling). Fixed weights, no training."""
    dims = region.ndim
    conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims](2, 8, 5, padding=2)
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}[dims]
    head = nn.Linear(8, 2)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:4, 0] = 1 / 5 ** dims
        conv.weight[4:, 1] = torch.randn(conv.weight[4:, 1].shape, generator=generator)
        conv.bias.zero_()
        head.weight.copy_(torch.tensor([[0.0] * 8, [40.0] * 4 + [0.0] * 4]))
        head.bias.copy_(torch.tensor([0.0, -2.0]))
    return nn.Sequential(conv, nn.ReLU(), Gate(region), pool(1), nn.Flatten(), head).eval()


def planted_inputs(region: np.ndarray, items: int = 6) -> np.ndarray:
    """`items` inputs: evidence (+1) inside the region on channel 0 (else small noise), strong
    noise everywhere on channel 1."""
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(0, 0.02, (items, *region.shape)),
                  rng.normal(0, 2.0, (items, *region.shape))], axis=1).astype(np.float32)
    x[:, 0, region] += 1.0
    return x


def gradcam_and_randomcam(dims: int, metrics: list[str], seeds: int = 6, **options):
    """The metrics of Grad-CAM's maps {name: (items,)} and of RandomCAM's with seeds 0 ...
    seeds - 1 {name: (seeds, items)} on the planted model of `dims`, for class 1 at layer
    LAYER; `options` go to evaluate (masks= defaults to the planted region)."""
    region = planted_region(dims)
    x = planted_inputs(region)
    exp = onnx_cam.Explainer(planted_model(region), example_input=torch.from_numpy(x))
    options.setdefault("masks", np.broadcast_to(region, (len(x), *region.shape)))

    def values(method):
        res = exp.explain(x, targets=1, layers=LAYER, methods=method)
        assert (res.probs[:, 1] > 0.9).all()
        return evaluate(exp, x, res, metrics, **options)

    gradcam = values("gradcam")
    random = [values(RandomCAM(seed=s)) for s in range(seeds)]
    return gradcam, {name: np.stack([r[name] for r in random]) for name in metrics}
