"""Input attributions against Captum 0.9 (and FullGrad against pytorch-grad-cam 1.5.7 on 2D,
its formula written out in torch on 1D / 3D), on small 1D, 2D and 3D torch models with and
without a final softmax.

With score="logits" onnx-cam explains the tensor before the softmax: Captum given the logits
model (the body) differentiates the same; with score="probs" it equals Captum given the whole
model, which differentiates the softmax output. Noise and baselines are passed to both
explicitly, so every comparison is exact up to float32 rounding (1e-4 of the largest value).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from torch_zoo import Net, assert_close, randomize

import onnx_cam
from onnx_cam import MethodError
from onnx_cam.methods import (
    GuidedGradCAM,
    IntegratedGradients,
    Saliency,
    SmoothGrad,
    SmoothGradSquared,
    VarGrad,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum")
captum_attr = pytest.importorskip("captum.attr", reason="Captum is the reference: pip install "
                                  "--no-deps captum==0.9.0")

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
GAP = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
SIZE = {1: (20,), 2: (10, 10), 3: (6, 6, 6)}
LAYER = "body.7"      # the last ReLU: Guided Grad-CAM's layer
TARGETS = [0, 2, 1]


def body(dims: int) -> nn.Sequential:
    """Biased conv, BatchNorm, ReLU, max pool, unbiased conv, BatchNorm, biased conv, ReLU."""
    conv, norm = CONV[dims], NORM[dims]
    return nn.Sequential(
        conv(2, 4, 3, padding=1), norm(4), nn.ReLU(), POOL[dims](2),
        conv(4, 5, 3, padding=1, bias=False), norm(5), conv(5, 6, 3, padding=1), nn.ReLU(),
        GAP[dims](1), nn.Flatten(), nn.Linear(6, 3))


@pytest.fixture(scope="module", params=[(1, None), (2, "Softmax"), (3, None), (1, "Softmax"),
                                        (2, None), (3, "Softmax")],
                ids=lambda p: f"{p[0]}d-{p[1] or 'logits'}")
def case(request):
    dims, head = request.param
    torch.manual_seed(dims)
    net = randomize(Net(body(dims), head), dims)
    x = torch.randn(3, 2, *SIZE[dims])
    exp = onnx_cam.Explainer(net, example_input=x)
    return net, x, exp


def captum(method, model, x, **kwargs):
    return method(model).attribute(x.clone(), target=TARGETS, **kwargs).detach().numpy()


def test_gradient_methods_equal_captum(case):
    net, x, exp = case
    methods = [Saliency(), Saliency(absolute=False), "input_x_gradient", "guided_backprop",
               "deconvolution", "gradcam", "guided_gradcam"]
    res = exp.explain(x.numpy(), targets=TARGETS, methods=methods[1:], layers=LAYER)
    absolute = exp.explain(x.numpy(), targets=TARGETS, methods=methods[0])
    assert_close(absolute.attribution(), captum(captum_attr.Saliency, net.body, x), "saliency")
    reference = {
        "saliency": captum(captum_attr.Saliency, net.body, x, abs=False),
        "input_x_gradient": captum(captum_attr.InputXGradient, net.body, x),
        "guided_backprop": captum(captum_attr.GuidedBackprop, net.body, x),
        "deconvolution": captum(captum_attr.Deconvolution, net.body, x),
        "guided_gradcam": captum_attr.GuidedGradCam(net.body, net.body[7]).attribute(
            x.clone(), target=TARGETS).detach().numpy(),
    }
    for name, ref in reference.items():
        assert_close(res.attribution(name), ref, name)
    # the view for figures: |channel sum|, min-max per row
    total = np.abs(reference["input_x_gradient"].sum(axis=1)).reshape(len(x), -1)
    lo, hi = total.min(1, keepdims=True), total.max(1, keepdims=True)
    assert_close(res.cam("input_x_gradient").reshape(len(x), -1), (total - lo) / (hi - lo),
                 "input_x_gradient view")
    assert res.cam("saliency", "input").shape == (len(x), *SIZE[x.ndim - 2])


    configured = exp.explain(x.numpy(), targets=TARGETS, methods=GuidedGradCAM(layer=LAYER),
                             layers=["body.2", LAYER])
    assert_close(configured.attribution(), reference["guided_gradcam"], "guided_gradcam(layer=)")
    with pytest.raises(MethodError, match="one layer"):
        exp.explain(x.numpy(), methods="guided_gradcam", layers=["body.2", LAYER])


def test_integrated_gradients_equal_captum_for_each_rule(case):
    net, x, exp = case
    with torch.no_grad():
        scale = float(net.body(x).abs().max())
    for method in ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
                   "riemann_trapezoid"):
        ig = IntegratedGradients(n_steps=7, method=method)
        res = exp.explain(x.numpy(), targets=TARGETS, methods=ig)
        ref, delta = captum_attr.IntegratedGradients(net.body).attribute(
            x.clone(), target=TARGETS, n_steps=7, method=method, return_convergence_delta=True)
        assert_close(res.attribution(), ref.detach().numpy(), f"ig {method}")
        assert_close(res.completeness_gap(), delta.detach().numpy(), "completeness gap",
                     scale=scale)


def _baselines(x: np.ndarray) -> dict:
    items = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    uniform = np.stack([np.random.default_rng([3, r]).uniform(x[r].min(), x[r].max(),
                                                                x.shape[1:])
                        for r in range(len(x))]).astype(np.float32)
    blur = ndimage.gaussian_filter(x, (0, 0) + (1.5,) * (x.ndim - 2)).astype(np.float32)
    return {0.5: np.full_like(x, 0.5), "items": items, "blur": blur, "uniform": uniform,
            "item": items[0]}


def test_integrated_gradients_baselines_and_probs_equal_captum(case):
    net, x, exp = case
    xs = x.numpy()
    for name, base in _baselines(xs).items():
        given = {"items": base, "item": base}.get(name, name)
        ig = IntegratedGradients(n_steps=6, baseline=given, blur_sigma=1.5, seed=3)
        res = exp.explain(xs, targets=TARGETS, methods=ig)
        ref = captum_attr.IntegratedGradients(net.body).attribute(
            x.clone(), baselines=torch.from_numpy(np.broadcast_to(base, xs.shape).copy()),
            target=TARGETS, n_steps=6).detach().numpy()
        assert_close(res.attribution(), ref, f"ig baseline {name}")
    if net.head_name is None:
        return
    # score="probs" explains what Captum differentiates given the whole (softmax) model
    res = exp.explain(xs, targets=TARGETS, methods=IntegratedGradients(n_steps=6),
                      score="probs")
    ref = captum_attr.IntegratedGradients(net).attribute(x.clone(), target=TARGETS,
                                                         n_steps=6).detach().numpy()
    assert_close(res.attribution(), ref, "ig probs")


def test_noise_tunnel_equals_captum_with_the_same_noise(case):
    net, x, exp = case
    samples, stdev = 4, 0.3
    for cls, nt_type in ((SmoothGrad, "smoothgrad"), (SmoothGradSquared, "smoothgrad_sq"),
                         (VarGrad, "vargrad")):
        torch.manual_seed(11)  # the very draw Captum's NoiseTunnel makes after the same seed
        noise = torch.normal(0, torch.tensor(stdev).repeat((len(x) * samples, *x.shape[1:])))
        torch.manual_seed(11)
        ref = captum_attr.NoiseTunnel(captum_attr.Saliency(net.body)).attribute(
            x.clone(), nt_type=nt_type, nt_samples=samples, stdevs=stdev, target=TARGETS,
            abs=False).detach().numpy()
        method = cls(nt_samples=samples, stdevs=stdev,
                     noise=noise.numpy().reshape(len(x), samples, *x.shape[1:]))
        res = exp.explain(x.numpy(), targets=TARGETS, methods=method)
        assert_close(res.attribution(), ref, nt_type)


def test_smoothgrad_seeded_noise_is_independent_of_batching():
    torch.manual_seed(0)
    net = randomize(Net(body(1)), 0)
    x = torch.randn(3, 2, *SIZE[1])
    exp = onnx_cam.Explainer(net, example_input=x)
    method = SmoothGrad(nt_samples=3, stdevs=0.2, seed=5, absolute=True)
    whole = exp.explain(x.numpy(), targets=TARGETS, methods=method)
    pieces = exp.explain(x.numpy(), targets=TARGETS, methods=method, batch_size=2)
    np.testing.assert_array_equal(whole.attribution(), pieces.attribution())
    rows = [np.random.default_rng([5, r]).normal(0, 0.2, (3, *x.shape[1:])) for r in range(3)]
    noise = torch.from_numpy(np.concatenate(rows).astype(np.float32))
    noisy = (x.repeat_interleave(3, 0) + noise).requires_grad_()
    target = torch.tensor(TARGETS).repeat_interleave(3)
    net.body(noisy)[torch.arange(len(noisy)), target].sum().backward()
    ref = noisy.grad.abs().reshape(3, 3, *x.shape[1:]).mean(1).numpy()
    assert_close(whole.attribution(), ref, "smoothgrad |g| seeded")


def test_runs_split_by_batch_size_and_memory_budget(cnn1d):
    _, x, onnx_bytes = cnn1d
    ig = IntegratedGradients(n_steps=6)
    whole = onnx_cam.Explainer(onnx_bytes).explain(x.numpy(), methods=ig)
    split = onnx_cam.Explainer(onnx_bytes).explain(x.numpy(), methods=ig, batch_size=4)
    np.testing.assert_allclose(split.attribution(), whole.attribution(), rtol=1e-6, atol=1e-9)
    small = onnx_cam.Explainer(onnx_bytes, max_memory="2KB")
    with pytest.raises(onnx_cam.MemoryBudgetError, match="Input attributions"):
        small.explain(x.numpy(), methods="saliency")


def _torch_fullgrad(body: nn.Sequential, x: torch.Tensor, targets) -> np.ndarray:
    """pytorch-grad-cam's FullGrad formula, written out for any spatial rank."""
    biased = [m for m in body if isinstance(m, (nn.modules.conv._ConvNd,
                                                nn.modules.batchnorm._BatchNorm))
              and m.bias is not None]
    outs = []
    hooks = [m.register_forward_hook(lambda m, i, o: outs.append(o)) for m in biased]
    x = x.clone().requires_grad_()
    logits = body(x)
    for h in hooks:
        h.remove()
    grads = torch.autograd.grad(logits[torch.arange(len(x)), list(targets)].sum(), [x, *outs])
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.ndim - 2]

    def scaled(maps):
        flat = maps.flatten(2)
        flat = flat - flat.min(2, keepdim=True).values
        return (flat / (1e-7 + flat.max(2, keepdim=True).values)).reshape(maps.shape)

    total = scaled((grads[0] * x).abs()).sum(1)
    for m, g in zip(biased, grads[1:]):
        bias = m.bias if isinstance(m, nn.modules.conv._ConvNd) else \
            m.bias - m.running_mean * m.weight / torch.sqrt(m.running_var + m.eps)
        per = scaled((bias.reshape(1, -1, *[1] * (x.ndim - 2)) * g).abs()).sum(1, keepdim=True)
        total = total + F.interpolate(per, size=x.shape[2:], mode=mode,
                                      align_corners=False)[:, 0]
    return total.detach().numpy()


# modules pytorch-grad-cam imports for code FullGrad never calls: stand-ins when absent
STAND_INS = {"torchvision.transforms": ("Compose", "Normalize", "ToTensor"),
             "sklearn.decomposition": ("KernelPCA",)}


@pytest.fixture(scope="module")
def gradcam_fullgrad():
    """pytorch-grad-cam's FullGrad class, without its package __init__ (which imports
    torchvision, whose wheels do not import beside torch 2.13); torchvision's transforms and
    scikit-learn's KernelPCA, imported by its utilities for other methods, are stood in for
    when absent. The code that runs is pytorch-grad-cam's."""
    if importlib.util.find_spec("pytorch_grad_cam") is None or importlib.util.find_spec(
            "ttach") is None:
        pytest.skip("pip install --no-deps grad-cam==1.5.7 ttach==0.0.3 opencv-python-headless")
    folder = list(importlib.util.find_spec("pytorch_grad_cam").submodule_search_locations)
    prefixes = ("pytorch_grad_cam", "torchvision", "sklearn")
    saved = {k: v for k, v in sys.modules.items() if k.startswith(prefixes)}
    package = types.ModuleType("pytorch_grad_cam")
    package.__path__ = folder
    sys.modules["pytorch_grad_cam"] = package
    for name, attributes in STAND_INS.items():
        top = name.split(".")[0]
        if importlib.util.find_spec(top) is None:
            module = types.ModuleType(name)
            for attribute in attributes:
                setattr(module, attribute, None)
            sys.modules[top], sys.modules[name] = types.ModuleType(top), module
    try:
        fullgrad = importlib.import_module("pytorch_grad_cam.fullgrad_cam").FullGrad
        target = importlib.import_module(
            "pytorch_grad_cam.utils.model_targets").ClassifierOutputTarget
        yield fullgrad, target
    finally:
        for name in [k for k in sys.modules if k.startswith(prefixes)]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_fullgrad(case, gradcam_fullgrad):
    net, x, exp = case
    res = exp.explain(x.numpy(), targets=TARGETS, methods="fullgrad")
    ref = _torch_fullgrad(net.body, x, TARGETS)
    assert_close(res.attribution()[:, 0], ref, "fullgrad formula")
    if x.ndim == 4:  # pytorch-grad-cam computes FullGrad on images only
        fullgrad, target = gradcam_fullgrad
        cam = fullgrad(net.body, [])(input_tensor=x.clone(),
                                     targets=[target(t) for t in TARGETS])
        assert_close(res.cam("fullgrad"), cam, "fullgrad vs pytorch-grad-cam")


class TextCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(12, 5, padding_idx=0)
        self.conv = nn.Conv1d(5, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, ids):
        return self.fc(F.relu(self.conv(self.embed(ids).transpose(1, 2))).mean(2))


def test_token_models_are_attributed_at_the_embedding():
    torch.manual_seed(0)
    net = TextCNN().eval()
    ids = torch.randint(1, 12, (3, 9))
    exp = onnx_cam.Explainer(net, example_input=ids)
    res = exp.explain(ids.numpy(), targets=TARGETS,
                      methods=[IntegratedGradients(n_steps=5), "input_x_gradient"])
    # Captum's layer IG from the padding token's (zero) embedding, summed over the embedding
    ref = captum_attr.LayerIntegratedGradients(net, net.embed).attribute(
        ids, baselines=torch.zeros_like(ids), target=TARGETS, n_steps=5)
    assert_close(res.attribution("integrated_gradients"), ref.sum(-1).detach().numpy(), "ig")
    emb = net.embed(ids).detach().requires_grad_()
    logits = net.fc(F.relu(net.conv(emb.transpose(1, 2))).mean(2))
    logits[torch.arange(3), TARGETS].sum().backward()
    assert_close(res.attribution("input_x_gradient"), (emb * emb.grad).sum(-1).detach().numpy(),
                 "input x gradient")
    assert res.cam("input_x_gradient").shape == (3, 9)
    for method in ("guided_backprop", "fullgrad"):
        with pytest.raises(MethodError, match="float inputs"):
            exp.explain(ids.numpy(), methods=method)


def test_results_save_and_load(tmp_path, cnn1d):
    _, x, onnx_bytes = cnn1d
    exp = onnx_cam.Explainer(onnx_bytes)
    res = exp.explain(x.numpy(), methods=["gradcam", IntegratedGradients(n_steps=4)])
    assert res.maps == [("gradcam", res.layers[0]), ("integrated_gradients", "input")]
    res.save(tmp_path / "r.npz")
    back = onnx_cam.Explanation.load(tmp_path / "r.npz")
    np.testing.assert_array_equal(back.attribution("ig"), res.attribution("ig"))
    np.testing.assert_array_equal(back.completeness_gap("ig"), res.completeness_gap("ig"))
    np.testing.assert_array_equal(back.cam("ig"), res.cam("ig", "input"))
    np.testing.assert_array_equal(back.cam("gradcam"), res.cam("gradcam"))
    with pytest.raises(MethodError, match="CAM method"):
        back.attribution("gradcam")
    with pytest.raises(onnx_cam.LayerError, match="input"):
        back.cam("ig", res.layers[0])
