"""Quantus-style faithfulness metrics on planted models (where the evidence is known), on 3D
volumes against a direct numpy loop, and on channels-last models. Parity with Quantus itself:
test_metrics_quantus.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import small_cnn
from test_metrics import ChannelsLast
from torch import nn

import onnx_cam
from onnx_cam.metrics import evaluate, faithfulness


class Planted(nn.Module):
    """Only the positions of `region` reach the output: the class-0 logit is the mean of
    relu(x) there (times 4); three more channels (-x, a smoothed +-x) reach class 1."""

    def __init__(self, region: np.ndarray):
        super().__init__()
        dims = region.ndim
        self.conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims](1, 4, 3, padding=1, bias=False)
        delta = np.zeros((3,) * dims)
        delta[(1,) * dims] = 1
        smooth = np.full((3,) * dims, 3.0 ** -dims)
        kernels = np.stack([delta, -delta, smooth, -smooth])[:, None]
        self.conv.weight.data = torch.tensor(kernels, dtype=torch.float32)
        self.register_buffer("mask", torch.tensor(region, dtype=torch.float32)[None, None])
        self.head = nn.Linear(4, 2, bias=False)
        self.head.weight.data = torch.tensor([[4.0, 0, 0, 0], [0, 0, 0, 4.0]])

    def forward(self, x):
        masked = torch.relu(self.conv(x)) * self.mask
        return self.head(masked.mean(dim=tuple(range(2, x.ndim))))


def planted_region(dims: int) -> np.ndarray:
    if dims == 1:   # a 300-sample signal, samples 100-199
        return np.r_[np.zeros(100), np.ones(100), np.zeros(100)].astype(bool)
    return np.pad(np.ones((16, 16)), ((0, 16), (0, 16))).astype(bool)   # a quadrant of 32 x 32


# (metric, higher is better, margin over the uniformly random map): correlations by an
# absolute difference, curve areas and infidelity by a ratio
AGAINST_RANDOM_MAP = [("faithfulness_correlation", True, 0.8), ("faithfulness_estimate", True, 0.8),
                      ("monotonicity_correlation", True, 0.4), ("pixel_flipping", False, 3.0),
                      ("region_perturbation", True, 1.6), ("selectivity", False, 3.0),
                      ("irof", True, 1.6), ("infidelity", False, 1.3)]


@pytest.mark.parametrize("dims", [1, 2], ids=["1d", "2d"])
def test_gradcam_beats_random_maps_on_a_planted_model(dims):
    region = planted_region(dims)
    model = Planted(region).eval()
    x = torch.randn(8, 1, *region.shape, generator=torch.Generator().manual_seed(0)).numpy()
    exp = onnx_cam.Explainer(model, example_input=torch.from_numpy(x))
    names = [m for m, _, _ in AGAINST_RANDOM_MAP]
    options = {"score": "logits", "baseline": "zero", "patch_size": 4 if dims == 2 else 10}
    gradcam = exp.explain(x, methods="gradcam", targets=0)
    assert not gradcam.cam()[:, ~region].any()     # the model's evidence is the region
    ours = evaluate(exp, x, gradcam, names + [f"{m}_random" for m in names], **options)
    random_cam = evaluate(exp, x, exp.explain(x, methods="randomcam", targets=0),
                          ["faithfulness_correlation", "faithfulness_estimate",
                           "pixel_flipping"], **options)
    for name, higher, margin in AGAINST_RANDOM_MAP:
        mine, chance = ours[name].mean(), ours[f"{name}_random"].mean()
        if name.startswith(("faithfulness", "monotonicity")):
            assert mine - chance > margin, (name, mine, chance)
        elif higher:
            assert mine > margin * chance, (name, mine, chance)
        else:
            assert mine * margin < chance, (name, mine, chance)
    # RandomCAM mixes the same masked channels, so it stays in the region too: it loses on
    # the rankings within the region, not on the region-level curves
    for name in ("faithfulness_correlation", "faithfulness_estimate"):
        assert ours[name].mean() - random_cam[name].mean() > 0.2
    assert ours["pixel_flipping"].mean() * 3 < random_cam["pixel_flipping"].mean()


def test_volumes_against_a_direct_loop():
    torch.manual_seed(3)
    model = small_cnn(3)
    x = torch.randn(2, 2, 5, 6, 7).numpy()
    exp = onnx_cam.Explainer(model, example_input=torch.from_numpy(x))
    res = exp.explain(x, methods="integrated_gradients")
    attribution = res.attribution().astype(np.float64)
    side, regions = 3, 7
    got = evaluate(exp, x, res, ["region_perturbation", "faithfulness_estimate"],
                   score="logits", baseline="zero", patch_size=side, regions=regions,
                   features_in_step=30)

    def logits(inputs, r):
        with torch.no_grad():
            out = model(torch.from_numpy(np.asarray(inputs, np.float32))).double().numpy()
        return out[:, res.targets[r]]

    for r in range(len(x)):
        y = logits(x[r:r + 1], r)[0]
        # region perturbation: patches of a grid padded by (floor, ceil) halves on each axis
        starts = [-((-n) % side // 2) for n in x.shape[2:]]
        patches = []
        for corner in itertools.product(*[range(s, n, side) for s, n in zip(starts, x.shape[2:])]):
            box = tuple(slice(max(c, 0), c + side) for c in corner)
            patches.append((attribution[r][(slice(None), *box)].sum(), box))
        order = sorted(range(len(patches)), key=lambda i: (-patches[i][0], i))[:regions]
        current, drops = x[r].copy(), []
        for i in order:
            current[(slice(None), *patches[i][1])] = 0
            drops.append(y - logits(current[None], r)[0])
        np.testing.assert_allclose(got["region_perturbation"][r], np.trapezoid(drops),
                                   rtol=1e-5, atol=1e-5)
        # faithfulness estimate: groups of 30 elements from the most relevant, one at a time
        flat = attribution[r].ravel()
        order = sorted(range(flat.size), key=lambda i: (-flat[i], i))
        sums, deltas = [], []
        for start in range(0, flat.size, 30):
            group = order[start:start + 30]
            removed = x[r].ravel().copy()
            removed[group] = 0
            sums.append(flat[group].sum())
            deltas.append(y - logits(removed.reshape(1, *x.shape[1:]), r)[0])
        np.testing.assert_allclose(got["faithfulness_estimate"][r],
                                   np.corrcoef(sums, deltas)[0, 1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["gradcam", "integrated_gradients"])
def test_channels_last_model_gives_the_same_values(method):
    torch.manual_seed(0)
    body = small_cnn(1)
    x = np.random.default_rng(0).normal(size=(3, 2, 40)).astype(np.float32)
    first = onnx_cam.Explainer(body, example_input=torch.from_numpy(x))
    x_last = np.ascontiguousarray(x.transpose(0, 2, 1))
    last = onnx_cam.Explainer(ChannelsLast(body), example_input=torch.from_numpy(x_last),
                              channels_last=True)
    names = [m for m in faithfulness.METRICS if m != "sufficiency"] + ["sparseness", "complexity",
                                                                      "arcc"]
    options = {"subset_size": 20, "runs": 10, "samples": 4, "patch_size": 6,
               "infidelity_patch_sizes": (5,)}
    a = evaluate(first, x, first.explain(x, targets=1, methods=method), names, **options)
    b = evaluate(last, x_last, last.explain(x_last, targets=1, methods=method), names,
                 **options)
    for name in names:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.slow
def test_arcc_equals_pytorch_grad_cams(monkeypatch):
    from references import pytorch_grad_cam

    pgc = pytorch_grad_cam()
    from pytorch_grad_cam.metrics import arcc as pgc_arcc
    from pytorch_grad_cam.metrics import road as pgc_road

    # its ROAD adds torch.randn noise, ours numpy's: both noise-free
    monkeypatch.setattr(pgc_road.NoisyLinearImputer.__init__, "__defaults__",
                        (0.0, pgc_road.neighbors_weights))
    torch.manual_seed(5)
    model = small_cnn(2, classes=3)
    x = torch.randn(3, 2, 12, 10)
    exp = onnx_cam.Explainer(model, example_input=x)
    res = exp.explain(x.numpy(), targets=[0, 2, 1], layers="/3/Relu_output_0",
                      methods="gradcam")
    # no ties at 0: its ROAD removes by percentile (ties together), ours exact counts
    key = ("gradcam", "/3/Relu_output_0")
    jitter = np.random.default_rng(0).random(res.cams[key].shape) * 1e-3
    res.cams[key] = (res.cams[key] + jitter).astype(np.float32)
    targets = [pgc.utils.model_targets.ClassifierOutputTarget(t) for t in (0, 2, 1)]
    base = pgc.GradCAM(model, target_layers=[model[3]])
    theirs = pgc_arcc.ARCC(base)(x, res.cam(), targets, model)
    ours = evaluate(exp, x.numpy(), res, "arcc", score="logits", road_noise=0.0)["arcc"]
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
