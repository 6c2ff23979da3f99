"""Quantus-style faithfulness metrics on planted models (where the evidence is known), on 3D
volumes against a direct numpy loop, and on channels-last models. Parity with Quantus itself:
test_metrics_quantus.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import small_cnn
from planted import gradcam_and_randomcam, planted_region
from test_metrics import ChannelsLast

import onnx_cam
from onnx_cam.metrics import evaluate, faithfulness
from onnx_cam.metrics.directions import BETTER

# (metric, margin) by which Grad-CAM beats RandomCAM (mean over 6 seeds and 6 items) and the
# uniformly random map on the planted models, in the metric's better direction: correlations
# by an absolute difference, IROF by a difference per segment, the rest by a ratio.
# Left out, as they cannot rank maps on these models: monotonicity (one bit per row; the 1D
# score rises with every restored feature in almost any order: Grad-CAM 1.00, RandomCAM
# 0.97; 2D 1.00 / 0.61), sufficiency (the fraction of rows with nearby maps predicted alike: all
# rows are class 1, so it measures how alike the 6 maps are, not the model),
# infidelity_quantus (unscaled relevance: it ranks maps by their scale, not their shape).
OVER_RANDOMCAM = {"faithfulness_correlation": 0.5, "faithfulness_estimate": 0.5,
                  "monotonicity_correlation": 0.4, "pixel_flipping": 3.0, "selectivity": 2.5,
                  "deletion": 2.5, "road": 2.5, "region_perturbation": 1.5, "irof": 0.2,
                  # bounded: a perfect map has the full score after the first third (1D) /
                  # quarter (2D) of the curve, any order has it at the end
                  "insertion": 1.4,
                  # a map weighs both input channels of its position alike, but only
                  # channel 0's noise moves the score: a perfect map halves a random one's
                  "infidelity": 1.5}
DIFFERENCE = ("faithfulness_correlation", "faithfulness_estimate", "monotonicity_correlation")


def beats(name: str, ours: float, theirs: float, margin: float, segments: int) -> bool:
    """Whether `ours` is better than `theirs` by `margin` (OVER_RANDOMCAM's units); ratios
    as margin * theirs, right for a `theirs` of either sign (ROAD's can be negative)."""
    if name in DIFFERENCE:
        return ours - theirs > margin
    if name == "irof":
        return (ours - theirs) / segments > margin
    return ours > margin * theirs if BETTER[name] == "higher" else ours * margin < theirs


PATCH = {1: 10, 2: 4}


def planted_faithfulness(dims: int):
    """OVER_RANDOMCAM's metrics and their _random baselines of Grad-CAM and RandomCAM (see
    gradcam_and_randomcam). region_perturbation: as many patches as the region holds (the
    curve after them is flat for any map that has removed the region); features_in_step and
    samples (monotonicity_correlation: 100 -> 20; infidelity: 10 -> 20): speed."""
    options = {"score": "logits", "baseline": "zero", "patch_size": PATCH[dims],
               "regions": 16 if dims == 2 else 10, "features_in_step": 16 if dims == 2 else 3,
               "samples": 20}
    names = list(OVER_RANDOMCAM)
    return gradcam_and_randomcam(dims, names + [f"{m}_random" for m in names], **options)


@pytest.mark.parametrize("dims", [1, 2], ids=["1d", "2d"])
def test_gradcam_beats_randomcam_on_every_faithfulness_metric(dims):
    segments = planted_region(dims).size // PATCH[dims] ** dims
    gradcam, random = planted_faithfulness(dims)
    for name, margin in OVER_RANDOMCAM.items():
        ours = gradcam[name].mean()
        # a RandomCAM map whose weights zero every position (ReLU) has no correlation: NaN
        theirs, chance = np.nanmean(random[name]), gradcam[f"{name}_random"].mean()
        assert beats(name, ours, theirs, margin, segments), (name, ours, theirs)
        assert beats(name, ours, chance, margin, segments), (name, ours, chance)


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
