"""Localisation metrics against Quantus 0.6.0 on 2D (and 1D where it takes signals), against
direct numpy loops written here on 3D, and the planted cases: a 1D model that only reads
samples 100-200 and a 2D model that only reads one quadrant, where Grad-CAM must beat
RandomCAM on every localisation metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from planted import gradcam_and_randomcam
from torch import nn

import onnx_cam
from onnx_cam.metrics import MetricError, evaluate
from onnx_cam.metrics.localisation import FAMILIES
from onnx_cam.metrics.relevance import relevance

NAMES = list(FAMILIES)
QUANTUS = {"pointing_game": "PointingGame", "attribution_localisation":
           "AttributionLocalisation", "top_k_intersection": "TopKIntersection",
           "relevance_mass_accuracy": "RelevanceMassAccuracy",
           "relevance_rank_accuracy": "RelevanceRankAccuracy", "auc": "AUC"}


def net(dims: int) -> nn.Sequential:
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[dims]
    torch.manual_seed(5)
    return nn.Sequential(conv(2, 4, 3, padding=1), nn.ReLU(), pool(1), nn.Flatten(),
                         nn.Linear(4, 3)).eval()


def boxes(n: int, spatial: tuple[int, ...], rng) -> np.ndarray:
    """One random axis-aligned box per item (intervals, rectangles, cuboids)."""
    masks = np.zeros((n, *spatial), bool)
    for m in masks:
        lo = [rng.integers(0, s - 2) for s in spatial]
        hi = [rng.integers(a + 1, s) for a, s in zip(lo, spatial)]
        m[tuple(slice(a, b + 1) for a, b in zip(lo, hi))] = True
    return masks


def explained(dims: int, spatial: tuple[int, ...], method="saliency"):
    x = np.random.default_rng(dims).normal(0, 1, (6, 2, *spatial)).astype(np.float32)
    model = net(dims)
    exp = onnx_cam.Explainer(model, example_input=torch.from_numpy(x))
    res = exp.explain(x, targets=[0, 1, 2, 0, 1, 2], methods=method)
    return model, exp, x, res


@pytest.mark.parametrize("dims, spatial", [(2, (9, 10)), (1, (40,))], ids=["2d", "1d"])
def test_localisation_matches_quantus(dims, spatial):
    from references import quantus
    q = quantus()
    model, exp, x, res = explained(dims, spatial)
    masks = boxes(len(x), spatial, np.random.default_rng(1))
    masks[2] = False                       # an empty mask: NaN for every metric
    ours = evaluate(exp, x, res, NAMES, masks=masks, top_k=7)
    a = relevance(res, "saliency", "input")[:, None]   # signed channel sum: no ties
    for name, cls in QUANTUS.items():
        kw = {"k": 7} if name == "top_k_intersection" else {}
        metric = getattr(q, cls)(disable_warnings=True, **kw)
        ref = np.array(metric(model=model, x_batch=x, y_batch=res.targets, a_batch=a,
                              s_batch=masks[:, None], channel_first=True, device="cpu"),
                       np.float64)
        keep = masks.reshape(len(x), -1).any(1)
        np.testing.assert_allclose(ours[name][keep], ref[keep], atol=1e-5, err_msg=name)
        assert np.isnan(ours[name][~keep]).all()


def test_focus_matches_quantus_on_a_mosaic():
    from references import quantus
    q = quantus()
    model, exp, x, res = explained(2, (10, 12))
    tiles = np.array([(1, 0, 0, 1), (0, 1, 1, 0), (1, 1, 0, 0), (0, 0, 1, 1), (1, 0, 1, 0),
                      (0, 1, 0, 1)])
    masks = np.zeros((len(x), 10, 12), bool)
    for m, (tl, tr, bl, br) in zip(masks, tiles):
        m[:5, :6], m[:5, 6:], m[5:, :6], m[5:, 6:] = tl, tr, bl, br
    ours = evaluate(exp, x, res, "focus", masks=masks)["focus"]
    metric = q.Focus(disable_warnings=True)
    ref = metric(model=model, x_batch=x, y_batch=res.targets,
                 a_batch=relevance(res, "saliency", "input")[:, None],
                 custom_batch=[tuple(t) for t in tiles], channel_first=True, device="cpu")
    np.testing.assert_allclose(ours, np.array(ref, np.float64), atol=1e-6)


def formulas(a: np.ndarray, cam: np.ndarray, s: np.ndarray, k: int) -> dict[str, float]:
    """Each metric of one row by its definition, position by position (3D reference)."""
    a, cam, s = a.ravel(), cam.astype(np.float64).ravel(), s.ravel()
    inside, outside = a[s], a[~s]
    order = sorted(range(a.size), key=lambda i: (-a[i], i))
    pairs = [(1.0 if u > v else 0.5 if u == v else 0.0) for u in inside for v in outside]
    return {
        "pointing_game": float(any(s[i] for i in range(a.size) if a[i] == a.max())),
        "attribution_localisation": np.abs(inside).sum() / (np.abs(a).sum() + 1e-9),
        "top_k_intersection": sum(s[i] for i in order[:k]) / k,
        "relevance_mass_accuracy": inside.sum() / a.sum(),
        "relevance_rank_accuracy": sum(s[i] for i in order[:s.sum()]) / s.sum(),
        "auc": float(np.mean(pairs)),
        "focus": np.clip(inside, 0, None).sum() / (np.clip(a, 0, None).sum() + 1e-9),
        "energy_pointing_game": cam[s].sum() / cam.sum(),
    }


@pytest.mark.parametrize("method", ["saliency", "gradcam"])
def test_localisation_on_volumes_matches_the_formulas(method):
    spatial = (4, 5, 6)
    _, exp, x, res = explained(3, spatial, method)
    masks = boxes(len(x), spatial, np.random.default_rng(2))
    ours = evaluate(exp, x, res, NAMES, masks=masks, top_k=0.1)
    a = relevance(res, method, "input" if method == "saliency" else None)
    for r in range(len(x)):
        ref = formulas(a[r], res.cam(method)[r], masks[r], round(0.1 * a[r].size))
        for name in NAMES:
            assert ours[name][r] == pytest.approx(ref[name], abs=1e-9), (name, r)


def test_masks_are_checked():
    _, exp, x, res = explained(1, (40,))
    with pytest.raises(MetricError, match="masks="):
        evaluate(exp, x, res, "pointing_game")
    with pytest.raises(MetricError, match=r"\(N, \*input_spatial\)"):
        evaluate(exp, x, res, "auc", masks=np.ones((len(x), 39), bool))
    with pytest.raises(MetricError, match="top_k"):
        evaluate(exp, x, res, "top_k_intersection", masks=np.ones((len(x), 40), bool),
                 top_k=41)


# ---- the planted cases (tests/planted.py) -------------------------------------------------------
@pytest.mark.parametrize("dims", [1, 2], ids=["1d", "2d"])
def test_planted_gradcam_beats_randomcam_on_every_localisation_metric(dims):
    gradcam, random = gradcam_and_randomcam(dims, NAMES, top_k=0.05)
    for name in NAMES:
        assert (gradcam[name] > 0.9).all(), (name, gradcam[name])
        # mean over 6 RandomCAM seeds and 6 items; a map that is 0 everywhere (every
        # position's weighted sum negative: ReLU) has no relevance mass to share out: NaN
        assert gradcam[name].mean() - np.nanmean(random[name]) > 0.35, (name, random[name])
