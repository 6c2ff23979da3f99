"""Quantus' faithfulness and complexity metrics against Quantus 0.6.0 itself (and Infidelity
against Captum), on the torch model that onnx-cam explains as ONNX.

Quantus gets the same explanations as numpy arrays (a_batch), the baseline 0 (ours:
baseline="zero"), attributions normalised per item (normalise_axes: ours are per row) and,
where it draws random numbers, the same draws: the tests seed np.random, replay Quantus'
sequence of np.random calls to get them, and hand them to onnx-cam through an option.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from references import quantus as load_quantus
from torch import nn

import onnx_cam
from onnx_cam.metrics import MetricError, evaluate

SHAPES = {1: (40,), 2: (12, 12)}
TOL = {"rtol": 1e-5, "atol": 1e-5}
CASES = [(2, 1, "gradcam"), (1, 1, "gradcam"), (2, 2, "integrated_gradients"),
         pytest.param((1, 2, "integrated_gradients"), marks=pytest.mark.slow)]


def make_model(dims: int, channels: int) -> nn.Sequential:
    conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims]
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}[dims]
    return nn.Sequential(conv(channels, 4, 3, padding=1), nn.ReLU(),
                         conv(4, 6, 3, stride=2, padding=1), nn.ReLU(), pool(1), nn.Flatten(),
                         nn.Linear(6, 3)).eval()


@pytest.fixture(scope="module")
def quantus():
    with pytest.MonkeyPatch.context() as patch:
        # Quantus 0.6.0's calculate_auc calls np.trapz, which numpy 2 renamed np.trapezoid
        patch.setattr(np, "trapz", np.trapezoid, raising=False)
        yield load_quantus()


@pytest.fixture(scope="module", params=CASES, ids=["2d-cam", "1d-cam", "2d-ig", "1d-ig"])
def case(request):
    dims, channels, method = request.param
    torch.manual_seed(dims + 10 * channels)
    model = make_model(dims, channels)
    x = torch.randn(4, channels, *SHAPES[dims]).numpy()
    exp = onnx_cam.Explainer(model, example_input=torch.from_numpy(x))
    res = exp.explain(x, methods=method)
    if method == "gradcam":
        # Grad-CAM's ReLU ties many positions at 0; Quantus sorts them unstably (numpy's
        # quicksort), onnx-cam by position: a small jitter gives both one order
        key = (res.methods[0], res.layers[0])
        jitter = np.random.default_rng(dims).random(res.cams[key].shape) * 1e-3
        res.cams[key] = (res.cams[key] + jitter).astype(np.float32)
    a = res.cam()[:, None] if method == "gradcam" else res.attribution()
    return model, x, exp, res, np.ascontiguousarray(a, np.float32)


def per_item(a: np.ndarray) -> dict:
    return {"normalise_func_kwargs": {"normalise_axes": tuple(range(1, a.ndim))}}


def run(metric, model, x, res, a, softmax=False, **kwargs):
    return np.asarray(metric(model=model, x_batch=x, y_batch=np.asarray(res.targets),
                             a_batch=a, channel_first=True, softmax=softmax, device="cpu",
                             **kwargs), np.float64)


def test_faithfulness_correlation(quantus, case):
    model, x, exp, res, a = case
    runs, size = 12, 10
    metric = quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size,
                                             perturb_baseline=0.0, return_aggregate=False,
                                             disable_warnings=True, **per_item(a))
    np.random.seed(3)
    expected = run(metric, model, x, res, a)
    features = a[0].size
    np.random.seed(3)   # Quantus' draws: per run, a subset per item
    subsets = np.array([[np.random.choice(features, size, replace=False) for _ in x]
                        for _ in range(runs)]).transpose(1, 0, 2)
    ours = evaluate(exp, x, res, "faithfulness_correlation", score="logits", baseline="zero",
                    runs=runs, subset_size=size, subsets=subsets)
    np.testing.assert_allclose(ours["faithfulness_correlation"], expected, **TOL)


@pytest.mark.parametrize("name", ["faithfulness_estimate", "pixel_flipping"])
def test_stepwise_removal(quantus, case, name):
    model, x, exp, res, a = case
    step = 8
    if name == "faithfulness_estimate":
        metric = quantus.FaithfulnessEstimate(features_in_step=step, perturb_baseline=0.0,
                                              disable_warnings=True, **per_item(a))
    else:
        metric = quantus.PixelFlipping(features_in_step=step, perturb_baseline=0.0,
                                       return_auc_per_sample=True, disable_warnings=True,
                                       **per_item(a))
    expected = run(metric, model, x, res, a)
    ours = evaluate(exp, x, res, name, score="logits", baseline="zero", features_in_step=step)
    np.testing.assert_allclose(ours[name], expected, **TOL)


def put_back(arr, indices, source, **kwargs):
    """Quantus' Monotonicity fills the baseline into the baseline (always True); this puts
    the input's values back, as Arya et al. define it."""
    out = arr.copy()
    rows = np.arange(len(arr))[:, None]
    out[rows, indices] = source[rows, indices]
    return out


def test_monotonicity(quantus, case):
    model, x, exp, res, a = case
    step = 8
    metric = quantus.Monotonicity(features_in_step=step, perturb_baseline=0.0,
                                  perturb_func=put_back,
                                  perturb_func_kwargs={"source": x.reshape(len(x), -1)},
                                  disable_warnings=True, **per_item(a))
    expected = run(metric, model, x, res, a)
    ours = evaluate(exp, x, res, "monotonicity", score="logits", baseline="zero",
                    features_in_step=step)
    np.testing.assert_array_equal(ours["monotonicity"], expected)


def test_monotonicity_correlation(quantus, case):
    model, x, exp, res, a = case
    step, samples = 8 if x.ndim == 3 else 24, 5
    metric = quantus.MonotonicityCorrelation(features_in_step=step, nr_samples=samples,
                                             disable_warnings=True, **per_item(a))
    np.random.seed(4)
    expected = run(metric, model, x, res, a)
    steps = -(-a[0].size // step)
    np.random.seed(4)   # per step and sample, one uniform value per item
    fills = np.array([[np.random.uniform(0, 1, size=len(x)) for _ in range(samples)]
                      for _ in range(steps)]).transpose(2, 0, 1)
    ours = evaluate(exp, x, res, "monotonicity_correlation", score="logits",
                    features_in_step=step, samples=samples, fills=fills)
    np.testing.assert_allclose(ours["monotonicity_correlation"], expected, **TOL)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_region_perturbation(quantus, case, order):
    model, x, exp, res, a = case
    side = 5   # pads every axis (12 -> 15, 40 -> 40 + 5)
    metric = quantus.RegionPerturbation(patch_size=side, order=order, regions_evaluation=6,
                                        perturb_baseline=0.0, disable_warnings=True,
                                        **per_item(a))
    curves = run(metric, model, x, res, a)
    expected = np.trapezoid(curves, axis=1)
    ours = evaluate(exp, x, res, "region_perturbation", score="logits", baseline="zero",
                    patch_size=side, regions=6, order=order)
    np.testing.assert_allclose(ours["region_perturbation"], expected, **TOL)


def test_selectivity(quantus, case):
    model, x, exp, res, a = case
    metric = quantus.Selectivity(patch_size=5, perturb_baseline=0.0, disable_warnings=True,
                                 **per_item(a))
    expected = np.trapezoid(run(metric, model, x, res, a), axis=1)
    ours = evaluate(exp, x, res, "selectivity", score="logits", baseline="zero", patch_size=5)
    np.testing.assert_allclose(ours["selectivity"], expected, **TOL)


@pytest.mark.slow
def test_irof_with_quantus_superpixels(quantus, case):
    model, x, exp, res, a = case
    if x.ndim != 4 or x.shape[1] != 1:
        pytest.skip("Quantus' IROF segments images (SLIC) only, and its one-channel removal "
                    "mask must be shaped like the input: single-channel images only")
    from quantus.helpers.utils import get_superpixel_segments

    segments = np.stack([get_superpixel_segments(np.moveaxis(item, 0, -1).astype("double"),
                                                 "slic") for item in x])
    metric = quantus.IROF(perturb_baseline=0.0, return_aggregate=False,
                          disable_warnings=True, **per_item(a))
    # one item per call: Quantus pads the curves of a batch to its longest segment count;
    # SLIC makes a segment of each of the 144 pixels, one Quantus call each: two items
    expected = np.concatenate([
        metric(model=model, x_batch=x[i:i + 1], y_batch=np.asarray(res.targets[i:i + 1]),
               a_batch=a[i:i + 1], channel_first=True, softmax=True, device="cpu")
        for i in range(2)])
    ours = evaluate(exp, x, res, "irof", score="probs", baseline="zero", segments=segments)
    np.testing.assert_allclose(ours["irof"][:2], expected, **TOL)


def test_sufficiency(quantus, case):
    model, x, exp, res, a = case
    # a given normalised per item: Quantus' own normalisation (per batch) then scales it by 1
    magnitudes = np.abs(a) / np.abs(a).reshape(len(a), -1).max(axis=1).reshape(
        (-1,) + (1,) * (a.ndim - 1))
    metric = quantus.Sufficiency(threshold=0.9, disable_warnings=True)
    expected = run(metric, model, x, res, magnitudes)
    ours = evaluate(exp, x, res, "sufficiency", sufficiency_threshold=0.9)
    np.testing.assert_allclose(ours["sufficiency"], expected, **TOL)


def test_infidelity_quantus(quantus, case):
    model, x, exp, res, a = case
    if x.ndim != 4:
        pytest.skip("Quantus' Infidelity patches the last two axes (a signal's channel axis)")
    metric = quantus.Infidelity(perturb_patch_sizes=[4, 6], n_perturb_samples=1,
                                perturb_baseline=0.0, disable_warnings=True)
    expected = run(metric, model, x, res, a)
    ours = evaluate(exp, x, res, "infidelity_quantus", score="logits", baseline="zero",
                    infidelity_patch_sizes=(4, 6))
    np.testing.assert_allclose(ours["infidelity_quantus"], expected, **TOL)


def test_infidelity_captum(case):
    captum_metrics = pytest.importorskip("captum.metrics", reason="Captum is the reference")
    model, x, exp, res, a = case
    samples = 6
    noise = np.random.default_rng(5).normal(0, 0.2, (len(x), samples, *x.shape[1:]))

    def perturb(inputs):
        drawn = torch.from_numpy(noise.reshape(-1, *x.shape[1:]).astype(np.float32))
        return drawn, inputs - drawn

    expected = captum_metrics.infidelity(
        model, perturb, torch.from_numpy(x), torch.from_numpy(np.broadcast_to(a, x.shape).copy()
                                                              if a.shape[1] == 1 else a),
        target=torch.as_tensor(res.targets), n_perturb_samples=samples, normalize=True)
    ours = evaluate(exp, x, res, "infidelity", score="logits", samples=samples,
                    perturbations=noise)
    np.testing.assert_allclose(ours["infidelity"], expected.double().numpy(), rtol=1e-4,
                               atol=1e-7)


@pytest.mark.parametrize("name", ["sparseness", "complexity", "effective_complexity"])
def test_complexity(quantus, case, name):
    model, x, exp, res, a = case
    metric = {"sparseness": quantus.Sparseness, "complexity": quantus.Complexity,
              "effective_complexity": quantus.EffectiveComplexity}[name](
        disable_warnings=True, **per_item(a))
    expected = run(metric, model, x, res, a.copy())
    ours = evaluate(exp, x, res, name)
    np.testing.assert_allclose(ours[name], expected, **TOL)


def test_options_are_checked(case):
    model, x, exp, res, a = case
    with pytest.raises(MetricError, match="subset_size"):
        evaluate(exp, x, res, "faithfulness_correlation", subset_size=a[0].size)
    with pytest.raises(MetricError, match="subsets must be"):
        evaluate(exp, x, res, "faithfulness_correlation", subset_size=3,
                 subsets=np.zeros((1, 2, 3), int))
    with pytest.raises(MetricError, match="segments must be"):
        evaluate(exp, x, res, "irof", segments=np.zeros((len(x), 3), int))
    with pytest.raises(MetricError, match="features_in_step"):
        evaluate(exp, x, res, "pixel_flipping", features_in_step=0)
