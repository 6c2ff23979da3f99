"""onnx-cam's metrics against pytorch-grad-cam's own metrics module (PyPI grad-cam 1.5.7).

pytorch-grad-cam's package __init__ imports every CAM class and, through them, torchvision
(whose PyPI wheels do not import beside torch 2.13) and ttach. Its metrics modules need only
torch, numpy, scipy and cv2, so they are loaded here from the installed package under a bare
stand-in for the package itself (a module whose __path__ is the installed folder): the code
that runs is pytorch-grad-cam's. Install with `pip install --no-deps grad-cam==1.5.7
opencv-python-headless` (with its dependencies, pip would pull torchvision and a second torch).

Where the definitions match (2D, 10 x 10 maps without ties, logits or softmax scores):
- ROAD: pytorch-grad-cam's ROADMostRelevantFirstAverage / ROADLeastRelevantFirstAverage /
  ROADCombined with NoisyLinearImputer(noise=0) are our road_morf / road_lerf / road with
  road_noise=0 (its noise is torch.randn, ours numpy's: equal only without noise);
- deletion: pytorch-grad-cam has no deletion / insertion curve or AUC. Its
  ROADMostRelevantFirst(p) at p = 90, 80, ..., 10 scores the inputs with 10 %, ..., 90 % of
  the positions imputed, which are our deletion curve's points with baseline="interp" and
  step=0.1 (noise-free linear imputation): the points and their trapezoid area agree;
- DropInConfidence = our avg_drop * Y (it does not divide by the original score Y, Chattopadhyay
  et al. do); IncreaseInConfidence = our avg_increase.
Where they differ: pytorch-grad-cam removes the positions below / above np.percentile of the
map, so tied values (e.g. the zeros of a Grad-CAM map) are removed or kept together and the
count removed varies; we remove exactly round(f * positions), ties by position. Its removed
count for percentile p is P - ceil(p / 100 * (P - 1)) for distinct values: the same as ours
for 10 x 10 maps, off by one for some other sizes.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import small_cnn
from scipy import ndimage
from scipy.integrate import trapezoid
from torch import nn

import onnx_cam
from onnx_cam.metrics import deletion_curves, evaluate

if importlib.util.find_spec("pytorch_grad_cam") is None or importlib.util.find_spec(
        "cv2") is None:
    pytest.skip("grad-cam is not installed: pip install --no-deps grad-cam==1.5.7 "
                "opencv-python-headless", allow_module_level=True)


@pytest.fixture(scope="module")
def gradcam_metrics():
    """pytorch-grad-cam's metrics modules, without running the package's __init__."""
    folder = list(importlib.util.find_spec("pytorch_grad_cam").submodule_search_locations)
    saved = {k: v for k, v in sys.modules.items() if k.startswith("pytorch_grad_cam")}
    package = types.ModuleType("pytorch_grad_cam")
    package.__path__ = folder
    sys.modules["pytorch_grad_cam"] = package
    try:
        road = importlib.import_module("pytorch_grad_cam.metrics.road")
        confidence = importlib.import_module("pytorch_grad_cam.metrics.cam_mult_image")
        perturbation = importlib.import_module("pytorch_grad_cam.metrics.perturbation_confidence")
        yield road, confidence, perturbation
    finally:
        for name in [k for k in sys.modules if k.startswith("pytorch_grad_cam")]:
            del sys.modules[name]
        sys.modules.update(saved)


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    model = small_cnn(2, nn.Softmax(dim=1))
    with torch.no_grad():
        model[-2].weight.mul_(8)   # a random net barely reacts; make the scores move
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 2, 10, 10)).astype(np.float32)
    exp = onnx_cam.Explainer(model, example_input=torch.from_numpy(x))
    res = exp.explain(x, targets=[0, 1, 2, 1], methods="gradcam")
    # smooth maps without ties, so that percentile thresholds and ranks remove the same sets
    maps = ndimage.gaussian_filter(rng.random((4, 10, 10)), (0, 1.5, 1.5))
    maps += np.linspace(0, 1e-6, 100).reshape(10, 10)
    lo, hi = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
    maps = ((maps - lo) / (hi - lo)).astype(np.float32)
    assert all(len(np.unique(m)) == 100 for m in maps)
    res = replace(res, cams={("gradcam", res.layers[0]): maps})
    return model, x, exp, res


def targets_of(res, probs: bool):
    if probs:
        return [lambda out, t=t: torch.softmax(out, -1)[t] for t in res.targets]
    return [lambda out, t=t: out[t] for t in res.targets]


def test_road_equals_pytorch_grad_cams(gradcam_metrics, case):
    road, _, perturbation = gradcam_metrics
    model, x, exp, res = case
    logits, tensor, maps = model[:-1], torch.from_numpy(x), res.cam()
    targets = targets_of(res, probs=False)
    percentiles = [10, 20, 30, 40, 50, 60, 70, 80, 90]

    def averaged(remove):
        def metric(p):
            return perturbation.PerturbationConfidenceMetric(
                remove(p, road.NoisyLinearImputer(noise=0.0)))
        return perturbation.AveragerAcrossThresholds(metric, percentiles)(
            tensor, maps, targets, logits)

    theirs_morf = averaged(perturbation.RemoveMostRelevantFirst)
    theirs_lerf = averaged(perturbation.RemoveLeastRelevantFirst)
    ours = evaluate(exp, x, res, ["road_morf", "road_lerf", "road"], score="logits",
                    road_noise=0.0)
    np.testing.assert_allclose(ours["road_morf"], theirs_morf, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours["road_lerf"], theirs_lerf, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours["road"], (theirs_lerf - theirs_morf) / 2, rtol=1e-4,
                               atol=1e-5)


def test_road_with_noise_is_close_to_pytorch_grad_cams(gradcam_metrics, case):
    road, _, _ = gradcam_metrics
    model, x, exp, res = case
    torch.manual_seed(0)
    theirs = road.ROADCombined()(torch.from_numpy(x), res.cam(), targets_of(res, False),
                                 model[:-1])
    ours = evaluate(exp, x, res, "road", score="logits")["road"]   # road_noise=0.01 as theirs
    np.testing.assert_allclose(ours, theirs, atol=0.02 * np.abs(theirs).max() + 1e-4)


def test_deletion_points_and_area_equal_pytorch_grad_cams_morf(gradcam_metrics, case):
    road, _, perturbation = gradcam_metrics
    model, x, exp, res = case
    fractions, ours = deletion_curves(exp, x, res, baseline="interp", step=0.1,
                                      score="probs")
    theirs = np.stack([perturbation.PerturbationConfidenceMetric(
        perturbation.RemoveMostRelevantFirst(round(100 * (1 - f)),
                                             road.NoisyLinearImputer(noise=0.0)))(
        torch.from_numpy(x), res.cam(), targets_of(res, probs=True), model[:-1],
        return_diff=False) for f in fractions[1:-1]], axis=1)
    assert np.ptp(theirs) > 0.2    # the curves move: the comparison means something
    np.testing.assert_allclose(ours[:, 1:-1], theirs, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(trapezoid(ours[:, 1:-1], fractions[1:-1], axis=1),
                               trapezoid(theirs, fractions[1:-1], axis=1), rtol=1e-4)


def test_confidence_equals_pytorch_grad_cams(gradcam_metrics, case):
    _, confidence, _ = gradcam_metrics
    model, x, exp, res = case
    tensor, maps, targets = torch.from_numpy(x), res.cam(), targets_of(res, probs=True)
    drop = confidence.DropInConfidence()(tensor, maps, targets, model[:-1])
    increase = confidence.IncreaseInConfidence()(tensor, maps, targets, model[:-1])
    ours = evaluate(exp, x, res, ["avg_drop", "avg_increase"])
    y = res.probs[np.arange(len(res)), res.targets]
    assert drop.max() > 0.02
    np.testing.assert_allclose(ours["avg_drop"] * y, drop, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(ours["avg_increase"], increase)
