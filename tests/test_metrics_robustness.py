"""Robustness metrics against Quantus 0.6.0 (its explain_func returns our maps of the inputs
it perturbs, its perturb_func adds our noise draws) and Max-Sensitivity against Captum's
sensitivity_max, on 1D and 2D models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import onnx_cam
from onnx_cam.methods import IntegratedGradients
from onnx_cam.metrics import MetricError, evaluate
from onnx_cam.metrics.options import row_rng
from onnx_cam.metrics.relevance import relevance
from onnx_cam.metrics.robustness import LIPSCHITZ, SENSITIVITY, STABILITY

SAMPLES = 4


def net(dims: int) -> nn.Sequential:
    conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims]
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}[dims]
    torch.manual_seed(3)
    return nn.Sequential(conv(1, 4, 3, padding=1), nn.ReLU(), conv(4, 6, 3, padding=1),
                         nn.ReLU(), pool(1), nn.Flatten(), nn.Linear(6, 3)).eval()


@pytest.fixture(scope="module", params=[1, 2], ids=["1d", "2d"])
def case(request):
    dims = request.param
    model = net(dims)
    shape = (5, 1, 40) if dims == 1 else (5, 1, 10, 12)
    x = np.random.default_rng(dims).normal(0, 1, shape).astype(np.float32)
    exp = onnx_cam.Explainer(model, example_input=torch.from_numpy(x))
    y = np.array([0, 1, 2, 1, 0])
    return model, exp, x, y


def explain_func(exp, method, layer):
    """Quantus' explain_func: our maps of whatever inputs Quantus hands over, (n, 1, *sp)."""
    def explain(model, inputs, targets, **kwargs):
        res = exp.explain(np.asarray(inputs, np.float32), targets=[int(t) for t in targets],
                          methods=method, **({} if layer == "input" else {"layers": layer}))
        return relevance(res, method, layer)[:, None]
    return explain


def our_noise(x, purpose, draw, seed=0):
    """Quantus' perturb_func adding, at its k-th call, our k-th noise sample of every row."""
    noise = np.stack([draw(row_rng(seed, r, purpose), (SAMPLES, *x.shape[1:]))
                      for r in range(len(x))])
    calls = iter(range(SAMPLES))

    def perturb(arr, indices=None, **kwargs):
        return arr + noise[:, next(calls)].reshape(len(arr), -1)
    return perturb


def quantus_call(metric, model, x, y, exp, method, layer, a=None):
    return np.array(metric(model=model, x_batch=x, y_batch=y, a_batch=a, channel_first=True,
                           explain_func=explain_func(exp, method, layer), device="cpu"))


@pytest.mark.parametrize("method, layer", [("gradcam", "3"), ("saliency", "input")])
def test_sensitivity_and_lipschitz_match_quantus(case, method, layer):
    from references import quantus
    q = quantus()
    model, exp, x, y = case
    res = exp.explain(x, targets=y.tolist(), methods=method,
                      **({} if layer == "input" else {"layers": layer}))
    ours = evaluate(exp, x, res, ["max_sensitivity", "avg_sensitivity",
                                  "local_lipschitz_estimate"], robustness_samples=SAMPLES)
    a = relevance(res, method, layer)[:, None]
    for name, cls, draw, kw in [
            ("max_sensitivity", q.MaxSensitivity, lambda g, s: g.uniform(-0.2, 0.2, s), {}),
            ("avg_sensitivity", q.AvgSensitivity, lambda g, s: g.uniform(-0.2, 0.2, s), {}),
            ("local_lipschitz_estimate", q.LocalLipschitzEstimate,
             lambda g, s: g.normal(0, 0.1, s), {"normalise": False})]:
        purpose = LIPSCHITZ if name == "local_lipschitz_estimate" else SENSITIVITY
        metric = cls(nr_samples=SAMPLES, perturb_func=our_noise(x, purpose, draw),
                     disable_warnings=True, **kw)
        ref = quantus_call(metric, model, x, y, exp, method, layer, a)
        np.testing.assert_allclose(ours[name], ref, rtol=1e-5, err_msg=name)
        assert np.isfinite(ref).sum() >= 4   # a constant (all-zero) map: NaN in both


def test_max_sensitivity_matches_captum(case):
    from captum.metrics import sensitivity_max
    model, exp, x, y = case
    res = exp.explain(x, targets=y.tolist(), layers="3", methods="gradcam")
    ours = evaluate(exp, x, res, "max_sensitivity", robustness_samples=SAMPLES)
    noise = np.stack([row_rng(0, r, SENSITIVITY).uniform(-0.2, 0.2, (SAMPLES, *x.shape[1:]))
                      for r in range(len(x))])

    def perturb(inputs, radius):   # rows repeated, each row's samples in a run
        return inputs + torch.from_numpy(noise.reshape(inputs.shape)).to(inputs.dtype)

    def explanation(inputs, target):   # Captum hands a tuple first, then a tensor
        tensor = inputs[0] if isinstance(inputs, tuple) else inputs
        maps = exp.explain(tensor.numpy(), targets=target.tolist(), layers="3",
                           methods="gradcam").cam()
        maps = torch.from_numpy(maps.astype(np.float64))
        return (maps,) if isinstance(inputs, tuple) else maps

    ref = sensitivity_max(explanation, torch.from_numpy(x), perturb, perturb_radius=0.2,
                          n_perturb_samples=SAMPLES, target=torch.from_numpy(y))
    ours, ref = ours["max_sensitivity"], ref.numpy()
    zero = ~res.cam().reshape(len(x), -1).any(axis=1)   # Captum divides an all-zero map by 1
    np.testing.assert_allclose(ours[~zero], ref[~zero], rtol=1e-5)
    assert np.isnan(ours[zero]).all()


def test_relative_stabilities_match_quantus(case):
    from references import quantus
    q = quantus()
    model, exp, x, y = case
    res = exp.explain(x, targets=y.tolist(), layers="3", methods="gradcam")
    ours = evaluate(exp, x, res, ["relative_input_stability", "relative_output_stability",
                                  "relative_representation_stability"],
                    robustness_samples=SAMPLES)
    a = relevance(res, "gradcam", "3")[:, None]
    draw = lambda g, s: g.uniform(0.02, 0.2, s)  # noqa: E731
    checked = 0
    for name, cls, kw in [("relative_input_stability", q.RelativeInputStability, {}),
                          ("relative_output_stability", q.RelativeOutputStability, {}),
                          ("relative_representation_stability",
                           q.RelativeRepresentationStability, {"layer_names": ["3"]})]:
        metric = cls(nr_samples=SAMPLES, perturb_func=our_noise(x, STABILITY, draw),
                     disable_warnings=True, **kw)
        ref = quantus_call(metric, model, x, y, exp, "gradcam", "3", a)
        same = np.isfinite(ref)   # Quantus: NaN once any sample changes the prediction
        np.testing.assert_allclose(ours[name][same], ref[same], rtol=1e-5, err_msg=name)
        checked += same.sum()
    assert checked >= 6


def test_continuity_matches_quantus(case):
    from references import quantus
    q = quantus()
    model, exp, x, y = case
    if x.ndim == 3:
        pytest.skip("Quantus' Continuity translates (N, C, H, W) images only (1D, 3D: below)")
    res = exp.explain(x, targets=y.tolist(), layers="3", methods="gradcam")
    ours = evaluate(exp, x, res, "continuity", continuity_steps=7)
    metric = q.Continuity(nr_steps=7, normalise=False, disable_warnings=True)
    ref = quantus_call(metric, model, x, y, exp, "gradcam", "3")
    np.testing.assert_allclose(ours["continuity"], ref, rtol=1e-5)


def shifted(item: np.ndarray, shift: int) -> np.ndarray:
    """The item moved along its last axis, position by position, the gap at its minimum."""
    out = np.full_like(item, item.min())
    width = item.shape[-1]
    for t in range(width):
        if 0 <= t - shift < width:
            out[..., t] = item[..., t - shift]
    return out


@pytest.mark.parametrize("dims", [1, 3], ids=["1d", "3d"])
def test_robustness_follows_the_formulas_on_signals_and_volumes(dims):
    conv = {1: nn.Conv1d, 3: nn.Conv3d}[dims]
    pool = {1: nn.AdaptiveAvgPool1d, 3: nn.AdaptiveAvgPool3d}[dims]
    torch.manual_seed(1)
    model = nn.Sequential(conv(2, 4, 3, padding=1), nn.ReLU(), pool(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    x = np.random.default_rng(4).normal(0, 1, (3, 2, *((30,) if dims == 1 else (4, 5, 6))))
    x = x.astype(np.float32)
    exp = onnx_cam.Explainer(model, example_input=torch.from_numpy(x))
    res = exp.explain(x, targets=[0, 1, 2], layers="1", methods="gradcam")
    ours = evaluate(exp, x, res, ["continuity", "local_lipschitz_estimate"],
                    continuity_steps=5, robustness_samples=SAMPLES)
    width = x.shape[-1]
    shifts = -width + (2 * width + 1) // 5 * np.arange(1, 6)
    for r in range(len(x)):
        e = res.cam()[r].astype(np.float64)
        moved = np.stack([shifted(x[r], int(s)) for s in shifts])
        maps = exp.explain(moved, targets=[r] * 5, layers="1", methods="gradcam").cam()
        ratios = [np.abs(m - e).sum() / (np.linalg.norm(xs - x[r]) + 1e-9)
                  for m, xs in zip(maps, moved)]
        assert ours["continuity"][r] == pytest.approx(max(ratios), rel=1e-5)
        noisy = x[r] + row_rng(0, r, LIPSCHITZ).normal(0, 0.1, (SAMPLES, *x.shape[1:]))
        maps = exp.explain(noisy.astype(np.float32), targets=[r] * SAMPLES, layers="1",
                           methods="gradcam").cam()
        ratios = [np.linalg.norm(m - e) / (np.linalg.norm(xs - x[r]) + 1e-10)
                  for m, xs in zip(maps, noisy)]
        assert ours["local_lipschitz_estimate"][r] == pytest.approx(max(ratios), rel=1e-5)


def test_a_configured_method_is_re_explained_with_its_configuration(case):
    _, exp, x, y = case
    method = IntegratedGradients(n_steps=4)
    res = exp.explain(x, targets=y.tolist(), methods=method)
    ours = evaluate(exp, x, res, "max_sensitivity", method=method, robustness_samples=2)
    noise = np.stack([row_rng(0, r, SENSITIVITY).uniform(-0.2, 0.2, (2, *x.shape[1:]))
                      for r in range(len(x))])
    e = relevance(res, method, "input")
    for r in range(len(x)):
        again = exp.explain((x[r] + noise[r]).astype(np.float32), targets=[int(y[r])] * 2,
                            methods=IntegratedGradients(n_steps=4))
        e2 = relevance(again, "integrated_gradients", "input")
        ref = max(np.linalg.norm(m - e[r]) / np.linalg.norm(e[r]) for m in e2)
        assert ours["max_sensitivity"][r] == pytest.approx(ref, rel=1e-5)


def test_noise_does_not_depend_on_batch_size(case):
    _, exp, x, y = case
    res = exp.explain(x, targets=y.tolist(), layers="3", methods="gradcam")
    a, b = (evaluate(exp, x, res, ["max_sensitivity", "relative_input_stability"],
                     robustness_samples=3, batch_size=bs) for bs in (2, 64))
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6)


def test_bad_robustness_options_say_what_to_fix(case):
    _, exp, x, y = case
    res = exp.explain(x, targets=y.tolist(), layers="3", methods="gradcam")
    with pytest.raises(MetricError, match="stability_noise"):
        evaluate(exp, x, res, "relative_input_stability", stability_noise=(0.2, 0.1))
    with pytest.raises(MetricError, match="robustness_samples"):
        evaluate(exp, x, res, "max_sensitivity", robustness_samples=0)
