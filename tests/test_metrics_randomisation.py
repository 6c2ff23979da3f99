"""Randomisation metrics: MPRT's independent variant, Efficient MPRT and Random Logit against
Quantus 0.6.0 (fed the same randomised torch models, exported for our side; its explain_func
returns our maps), Smooth MPRT's denoised maps against torch autograd over the same noise,
and the planted case: every randomisation decorrelates Grad-CAM's maps."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from planted import LAYER, planted_inputs, planted_model, planted_region
from torch import nn

import onnx_cam
from onnx_cam.metrics import MetricError, evaluate, independent_randomization
from onnx_cam.metrics.options import Purpose, row_rng
from onnx_cam.metrics.randomisation import (
    efficient,
    flat_ssim,
    independent,
    maps_of,
)
from onnx_cam.metrics.relevance import relevance
from onnx_cam.metrics.sanity import explainer_of
from onnx_cam.metrics.scoring import Rows


def net(dims: int, classes: int = 3) -> nn.Sequential:
    conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims]
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}[dims]
    torch.manual_seed(7)
    return nn.Sequential(conv(1, 4, 3, padding=1), nn.ReLU(), conv(4, 6, 3, padding=1),
                         nn.ReLU(), pool(1), nn.Flatten(), nn.Linear(6, classes)).eval()


def setup(dims: int, classes: int = 3):
    model = net(dims, classes)
    shape = (4, 1, 30) if dims == 1 else (4, 1, 9, 10)
    x = np.random.default_rng(dims).normal(0, 1, shape).astype(np.float32)
    y = np.arange(4) % classes
    exp = onnx_cam.Explainer(model, example_input=torch.from_numpy(x))
    return model, exp, x, y


def ours_for(x, layer="3", method="gradcam"):
    """Quantus' explain_func: our maps from whatever torch model Quantus hands over."""
    def explain(model, inputs, targets, **kwargs):
        exp = onnx_cam.Explainer(copy.deepcopy(model).eval(),
                                 example_input=torch.from_numpy(x))
        res = exp.explain(np.asarray(inputs, np.float32), targets=[int(t) for t in targets],
                          methods=method, **({} if layer == "input" else {"layers": layer}))
        return relevance(res, method, layer)[:, None]
    return explain


def quantus_models(q, model, x, order):
    """Quantus' randomised copies of `model`, in its order, each as an ONNX ModelProto."""
    wrapped = q.PyTorchModel(model, channel_first=True)
    for name, random_model in wrapped.get_random_layer_generator(order=order, seed=42):
        proto = onnx_cam.Explainer(copy.deepcopy(random_model).eval(),
                                   example_input=torch.from_numpy(x)).model.proto
        yield name, proto


def rows_of(exp, x, res, method="gradcam", layer="3"):
    return Rows.from_explanation(exp, x, res, method, layer)


@pytest.mark.parametrize("dims", [1, 2], ids=["1d", "2d"])
def test_independent_mprt_matches_quantus(dims):
    from references import quantus
    q = quantus()
    model, exp, x, y = setup(dims)
    # saliency: Quantus' batched Spearman fails on a constant map, which a randomised
    # model's Grad-CAM can be
    res = exp.explain(x, targets=y.tolist(), methods="saliency")
    a = relevance(res, "saliency", "input")
    cascade = independent(exp, rows_of(exp, x, res, "saliency", "input"), "saliency", "input",
                          "logits", quantus_models(q, model, x, "independent"), 64, a)
    metric = q.MPRT(layer_order="independent", disable_warnings=True)
    ref = metric(model=model, x_batch=x, y_batch=y, a_batch=a[:, None], channel_first=True,
                 explain_func=ours_for(x, "input", "saliency"), device="cpu")
    assert cascade.layers == [k for k in ref if k != "original"] == ["0", "2", "6"]
    for i, name in enumerate(cascade.layers):
        np.testing.assert_allclose(cascade.spearman[i], ref[name], atol=1e-6, err_msg=name)


@pytest.mark.parametrize("dims", [1, 2], ids=["1d", "2d"])
def test_efficient_mprt_matches_quantus(dims):
    from references import quantus
    q = quantus()
    model, exp, x, y = setup(dims)
    res = exp.explain(x, targets=y.tolist(), layers="3", methods="gradcam")
    *_, (_, proto) = quantus_models(q, model, x, "bottom_up")   # every layer randomised
    ours = efficient(explainer_of(exp, proto), rows_of(exp, x, res), "gradcam", "3",
                     "logits", 64, relevance(res, "gradcam", "3"))
    metric = q.EfficientMPRT(disable_warnings=True)
    ref = metric(model=model, x_batch=x, y_batch=y, a_batch=None, channel_first=True,
                 explain_func=ours_for(x), device="cpu")
    np.testing.assert_allclose(ours, ref, rtol=1e-6)


@pytest.mark.parametrize("dims", [1, 2], ids=["1d", "2d"])
def test_random_logit_matches_quantus(dims):
    from references import quantus
    q = quantus()
    model, exp, x, y = setup(dims, classes=2)    # two classes: the other one is the random one
    res = exp.explain(x, targets=y.tolist(), layers="3", methods="gradcam")
    ours = evaluate(exp, x, res, "random_logit")["random_logit"]
    metric = q.RandomLogit(num_classes=2, disable_warnings=True)
    ref = metric(model=model, x_batch=x, y_batch=y, a_batch=relevance(res, "gradcam", "3")[:, None],
                 channel_first=True, explain_func=ours_for(x), device="cpu")
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_flat_ssim_matches_scikit_image(rng):
    from references import quantus
    quantus()                                     # puts .venv/refs (scikit-image) on the path
    from skimage.metrics import structural_similarity
    a, b = rng.random((3, 50)), rng.random((3, 50))
    b[1] = a[1] * 0.5 + 0.2
    for i in range(3):
        span = max(a[i].max(), b[i].max()) - min(a[i].min(), b[i].min())
        ref = structural_similarity(a[i], b[i], data_range=span)
        assert flat_ssim(a[i:i + 1], b[i:i + 1])[0] == pytest.approx(ref, abs=1e-12)


def test_smooth_maps_match_torch_saliency_over_the_same_noise():
    model, exp, x, y = setup(2)
    res = exp.explain(x, targets=y.tolist(), methods="saliency")
    rows = Rows.from_explanation(exp, x, res, "saliency", "input")
    ours = maps_of(exp, rows, "saliency", "input", "logits", 64, samples=5, noise=0.1, seed=3)
    for r in range(len(x)):
        item = x[r].astype(np.float64)
        noise = 0.1 * (item.max() - item.min()) * row_rng(3, r, Purpose.SMOOTH).standard_normal(
            (4, *item.shape))
        copies = torch.tensor(np.concatenate([item + noise, item[None]]), dtype=torch.float32,
                              requires_grad=True)
        model(copies)[:, y[r]].sum().backward()
        ref = copies.grad.abs().sum(1).mean(0).numpy()   # saliency |grad|, channel sum
        np.testing.assert_allclose(ours[r], ref, rtol=1e-4, atol=1e-6)


def test_independent_randomization_lists_every_parameter_layer():
    _, exp, x, y = setup(1)
    res = exp.explain(x, targets=y.tolist(), layers="3", methods="gradcam")
    cascade = independent_randomization(exp, x, res)
    assert len(cascade.layers) == 3 and cascade.spearman.shape == (3, len(x))
    v = evaluate(exp, x, res, "mprt_independent")["mprt_independent"]
    np.testing.assert_allclose(v, cascade.spearman.mean(0))
    with pytest.raises(MetricError, match="smooth_samples"):
        evaluate(exp, x, res, "smooth_mprt", smooth_samples=0)


@pytest.mark.parametrize("dims", [1, 2], ids=["1d", "2d"])
def test_planted_randomisation_decorrelates_gradcam(dims):
    region = planted_region(dims)
    x = planted_inputs(region)
    exp = onnx_cam.Explainer(planted_model(region), example_input=torch.from_numpy(x))
    res = exp.explain(x, targets=1, layers=LAYER, methods="gradcam")
    v = evaluate(exp, x, res, ["mprt_independent", "smooth_mprt", "efficient_mprt",
                               "randomization_spearman"], smooth_samples=3)
    assert (v["randomization_spearman"] < 0.5).all()
    assert (v["smooth_mprt"] < 0.5).all()
    assert (v["mprt_independent"] < 0.7).all()
    assert (v["efficient_mprt"] > 0.1).all()
