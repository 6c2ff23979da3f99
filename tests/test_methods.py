"""Every CAM method against its paper's formula, written here in torch on autograd values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import export_bytes, small_cnn
from torch import nn

import onnx_cam

LAYER_INDEX = 3          # the second ReLU of small_cnn
TARGETS = [0, 2, 1]


SHAPES = {1: (3, 2, 30), 2: (3, 2, 12, 10), 3: (3, 2, 6, 8, 5)}
MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


@pytest.fixture(scope="module", params=[1, 2, 3], ids=["1d", "2d", "3d"])
def setup(request):
    torch.manual_seed(3)
    model = small_cnn(request.param, nn.Softmax(dim=1), classes=3)
    x = torch.randn(*SHAPES[request.param])
    exp = onnx_cam.Explainer(export_bytes(model, x))
    body = model[:-1]
    acts = body[:LAYER_INDEX + 1](x).detach().requires_grad_(True)
    logits = body[LAYER_INDEX + 1:](acts)
    logits[torch.arange(3), torch.tensor(TARGETS)].sum().backward()
    return exp, model, x, acts.detach(), acts.grad


def spatial(t):
    return tuple(range(2, t.ndim))


def spatial_sum(t):
    return t.sum(dim=spatial(t))


def principal(maps):
    """First principal component per item, oriented to correlate with the channel sum."""
    out = []
    for m in maps.double():
        flat = m.reshape(m.shape[0], -1).T
        centred = flat - flat.mean(0)
        _, _, vt = torch.linalg.svd(centred, full_matrices=False)
        proj = centred @ vt[0]
        if proj @ centred.sum(1) < 0:
            proj = -proj
        out.append(proj.reshape(m.shape[1:]))
    return torch.stack(out).float()


def reference(method, model, x, a, g):
    def per_channel(w):
        return w.reshape(w.shape + (1,) * (a.ndim - 2))

    if method == "gradcam":
        return F.relu((per_channel(g.mean(dim=spatial(g))) * a).sum(1))
    if method == "hirescam":
        return F.relu((g * a).sum(1))
    if method == "gradcam++":
        alpha = g**2 / (2 * g**2 + per_channel(spatial_sum(a)) * g**3 + 1e-6)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        return F.relu((per_channel(spatial_sum(F.relu(g) * alpha)) * a).sum(1))
    if method == "xgradcam":
        w = spatial_sum(g * a / (per_channel(spatial_sum(a)) + 1e-7))
        return F.relu((per_channel(w) * a).sum(1))
    if method == "layercam":
        return F.relu((F.relu(g) * a).sum(1))
    if method == "gradcamelementwise":
        return F.relu(F.relu(g * a).sum(1))
    if method == "eigencam":
        return F.relu(principal(a))
    if method == "eigengradcam":
        return F.relu(principal(g * a))
    body = model[:-1]
    weights = torch.empty(a.shape[:2])
    with torch.no_grad():
        for i, target in enumerate(TARGETS):
            if method == "scorecam":
                masks = F.interpolate(a[i][:, None], size=x.shape[2:], mode=MODES[x.ndim - 2],
                                      align_corners=True)
                lo = masks.amin(dim=spatial(masks), keepdim=True)
                hi = masks.amax(dim=spatial(masks), keepdim=True)
                masks = (masks - lo) / (hi - lo + 1e-8)
                scores = body(x[i:i + 1] * masks)[:, target]
                weights[i] = torch.softmax(scores, 0)
            else:  # ablationcam
                head = body[LAYER_INDEX + 1:]
                original = head(a[i:i + 1])[0, target]
                variants = a[i].repeat(a.shape[1], *[1] * (a.ndim - 1))
                variants[torch.arange(a.shape[1]), torch.arange(a.shape[1])] = 0
                weights[i] = (original - head(variants)[:, target]) / original
    return F.relu((per_channel(weights) * a).sum(1))


METHODS = ["gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "gradcamelementwise",
           "eigencam", "eigengradcam", "scorecam", "ablationcam"]


@pytest.mark.parametrize("method", METHODS)
def test_method_matches_its_formula(setup, method):
    exp, model, x, a, g = setup
    res = exp.explain(x.numpy(), targets=TARGETS, layers="/3/Relu_output_0", methods=method)
    ref = reference(method, model, x, a, g).numpy()
    np.testing.assert_allclose(res.raw(), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    cam = res.cam()
    assert cam.shape == x.shape[:1] + x.shape[2:]
    assert np.nanmin(cam) >= 0 and np.nanmax(cam) <= 1


def test_method_aliases_and_eigen_smoothing(setup):
    exp, model, x, a, g = setup
    res = exp.explain(x.numpy(), targets=TARGETS, layers="/3/Relu_output_0",
                      methods=["Grad-CAM", "gradcam_plusplus"], eigen_smooth=True)
    weights = g.mean(dim=spatial(g)).reshape(g.shape[:2] + (1,) * (g.ndim - 2))
    ref = F.relu(principal(weights * a)).numpy()
    np.testing.assert_allclose(res.raw("grad-cam"), ref, rtol=1e-4, atol=1e-6)
    assert res.methods == ["gradcam", "gradcam++"]


def test_eigencam_is_target_free(setup):
    exp, _, x, _, _ = setup
    one = exp.explain(x.numpy(), targets=0, methods="eigencam").raw()
    other = exp.explain(x.numpy(), targets=2, methods="eigencam").raw()
    np.testing.assert_allclose(one, other, atol=1e-7)


def test_ablation_runs_only_the_head_and_sees_skip_connections():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(2, 4, 3, padding=1)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(6, 2)

        def forward(self, x):
            h = self.relu(self.conv(x))
            pooled = torch.cat([h.mean(2), x.mean(2)], 1)     # the head reads x again
            return self.fc(pooled)

    torch.manual_seed(4)
    model = Skip().eval()
    x = torch.randn(2, 2, 16)
    exp = onnx_cam.Explainer(model, example_input=x)
    res = exp.explain(x.numpy(), targets=[1, 0], layers="relu", methods="ablationcam")
    with torch.no_grad():
        h = model.relu(model.conv(x))
        ref = []
        for i, t in enumerate([1, 0]):
            def score(acts, i=i, t=t):
                pooled = torch.cat([acts.mean(2), x[i:i + 1].expand(len(acts), -1, -1).mean(2)],
                                   1)
                return model.fc(pooled)[:, t]
            original = score(h[i:i + 1])[0]
            variants = h[i].repeat(4, 1, 1)
            variants[torch.arange(4), torch.arange(4)] = 0
            w = (original - score(variants)) / original
            ref.append(F.relu((w[:, None] * h[i]).sum(0)))
    np.testing.assert_allclose(res.raw(), torch.stack(ref).numpy(), rtol=1e-4, atol=1e-6)
