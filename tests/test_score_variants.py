"""SS-CAM and IS-CAM against TorchCAM 0.5.0's SSCAM / ISCAM on 2D and 3D (the same noise
draws handed to it), and against their formula written in torch on 1D."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import export_bytes, small_cnn
from references import torchcam

import onnx_cam
from onnx_cam.methods import ISCAM, SSCAM

TARGETS = [0, 2]
SHAPES = {1: (2, 2, 20), 2: (2, 2, 10, 8), 3: (2, 2, 6, 6, 4)}
MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}


class Draws:
    """Stands in for TorchCAM's noise distribution: hands out the noise onnx-cam draws."""

    def __init__(self, noise):
        self.noise = iter(noise)

    def sample(self, size):
        value = torch.from_numpy(next(self.noise))
        assert tuple(value.shape) == tuple(size)
        return value


def noise_draws(method, shape):
    rng = np.random.default_rng(method.seed)
    return [rng.normal(0, method.std, shape).astype(np.float32) for _ in range(method.samples)]


def setup(dims):
    torch.manual_seed(20 + dims)
    model = small_cnn(dims, classes=3)
    x = torch.randn(*SHAPES[dims])
    return model, x, onnx_cam.Explainer(export_bytes(model, x))


def ours(exp, x, method):
    return exp.explain(x.numpy(), targets=TARGETS, layers="/3/Relu_output_0",
                       methods=method).raw()


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("method", [SSCAM(samples=3, std=0.5, seed=4), ISCAM(samples=4)],
                         ids=["sscam", "iscam"])
def test_equals_torchcam(dims, method):
    methods = torchcam()
    model, x, exp = setup(dims)
    cls = methods.SSCAM if isinstance(method, SSCAM) else methods.ISCAM
    extractor = cls(model, target_layer=model[3], batch_size=7, num_samples=method.samples,
                    input_shape=tuple(x.shape[1:]), **(
                        {"std": method.std} if isinstance(method, SSCAM) else {}))
    if isinstance(method, SSCAM):
        extractor._distrib = Draws(noise_draws(method, (len(x), 8, *x.shape[2:])))
    with torch.no_grad():
        model(x)
    ref = extractor(class_idx=TARGETS, normalized=False)[0].numpy()
    extractor.remove_hooks()
    np.testing.assert_allclose(ours(exp, x, method), ref, rtol=1e-4, atol=1e-5 * ref.max())


@pytest.mark.parametrize("method", [SSCAM(samples=3, std=0.5, seed=1), ISCAM(samples=3)],
                         ids=["sscam", "iscam"])
def test_signals_follow_the_formula(method):
    model, x, exp = setup(1)
    with torch.no_grad():
        a = model[:4](x)
        flat = a.flatten(2)
        low = flat.amin(2, keepdim=True)
        scaled = ((flat - low) / (flat.amax(2, keepdim=True) - low + 1e-8)).reshape(a.shape)
        masks = F.interpolate(scaled, size=x.shape[2:], mode="linear")
        base = model(x)[torch.arange(2), torch.tensor(TARGETS)]
        if isinstance(method, SSCAM):
            variants = [masks + torch.from_numpy(n) for n in noise_draws(method, masks.shape)]
        else:
            steps = np.cumsum(np.arange(1, method.samples + 1) / method.samples)
            variants = [float(c) * masks for c in steps]
        totals = torch.zeros(a.shape[:2])
        for varied in variants:
            for i, t in enumerate(TARGETS):
                scores = model(x[i][None] * varied[i][:, None])[:, t]
                totals[i] += scores - base[i]
        w = torch.softmax(totals / method.samples, dim=1)
        ref = F.relu((w[..., None] * a).sum(1)).numpy()
    np.testing.assert_allclose(ours(exp, x, method), ref, rtol=1e-4, atol=1e-5 * ref.max())
