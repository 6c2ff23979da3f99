"""Shared helpers of the fidelity tests: a classifier wrapper, torch reference, comparisons.

Every test model is a :class:`Net`: ``body`` maps the input to the true logits and ``head``
is the final activation (softmax / sigmoid / log-softmax) or nothing. The torch reference
takes the logits from ``net.body`` (what onnx-cam explains: the tensor before the head),
records each named module's output (last call) with forward hooks and differentiates
``sum(seed * logits)`` with autograd.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ATOL = 1e-7       # absolute slack added to every relative comparison
RTOL = 1e-4       # relative to the largest magnitude of the reference
CAM_ATOL = 1e-3   # upsampled, min-max normalised maps are in [0, 1]
INTERP = {1: "linear", 2: "bilinear", 3: "trilinear"}


class Net(nn.Module):
    """``head(body(x))``; the score onnx-cam explains is ``body(x)``."""

    def __init__(self, body: nn.Module, head: str | None = None):
        super().__init__()
        self.body = body
        self.head = {None: nn.Identity(), "Softmax": nn.Softmax(dim=1),
                     "Sigmoid": nn.Sigmoid(), "LogSoftmax": nn.LogSoftmax(dim=1)}[head]
        self.head_name = head

    def forward(self, x):
        return self.head(self.body(x))


def randomize(net: nn.Module, seed: int) -> nn.Module:
    """Non-trivial normalisation statistics and affine parameters; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
                              nn.modules.instancenorm._InstanceNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(1.0 + 0.3 * torch.randn(m.weight.shape, generator=gen))
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
            if isinstance(m, nn.PReLU):
                m.weight.copy_(0.1 + 0.3 * torch.rand(m.weight.shape, generator=gen))
    return net.eval()


def one_hot(targets: np.ndarray, classes: int) -> torch.Tensor:
    seed = torch.zeros(len(targets), classes)
    seed[torch.arange(len(targets)), torch.as_tensor(np.array(targets))] = 1.0
    return seed


def reference(net: Net, x: np.ndarray, layers: list[str], targets=None):
    """Torch autograd reference: logits, targets and per layer (activations, gradients).

    ``targets=None`` explains each item's arg-max class, as onnx-cam does.
    """
    modules = dict(net.named_modules())
    outputs: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(_module, _inputs, out):
            if out.requires_grad:
                out.retain_grad()
            outputs[name] = out  # the last call wins, as in the converter's layer map
        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in layers]
    try:
        xt = torch.from_numpy(np.array(x, np.float32)).requires_grad_(True)
        logits = net.body(xt)
    finally:
        for h in handles:
            h.remove()
    ids = (logits.detach().argmax(1).numpy() if targets is None
           else np.broadcast_to(np.asarray(targets), (len(x),)))
    (one_hot(ids, logits.shape[1]) * logits).sum().backward()
    per_layer = {}
    for name in layers:
        out = outputs[name]
        grad = out.grad if out.grad is not None else torch.zeros_like(out)
        per_layer[name] = (out.detach().numpy().astype(np.float64),
                           grad.detach().numpy().astype(np.float64))
    return logits.detach().numpy().astype(np.float64), ids, per_layer


def ref_gradcam(a: np.ndarray, g: np.ndarray):
    """sum_c mean_spatial(G)[c] * A[c] before the ReLU, and its cancellation-free magnitude
    sum_c mean_spatial(|G|)[c] * |A[c]| (the scale of float32 rounding in the map)."""
    axes = tuple(range(2, a.ndim))
    weights = g.mean(axis=axes, keepdims=True)
    size = np.abs(g).mean(axis=axes, keepdims=True)
    return (weights * a).sum(axis=1), float((size * np.abs(a)).sum(axis=1).max())


def ref_hirescam(a: np.ndarray, g: np.ndarray):
    """sum_c A * G before the ReLU, and its magnitude sum_c |A * G|."""
    return (a * g).sum(axis=1), float(np.abs(a * g).sum(axis=1).max())


def ref_upsampled_minmax(raw: np.ndarray, size: tuple[int, ...]):
    """F.interpolate(align_corners=False) then per-item min-max, and each item's range.

    This is what pytorch-grad-cam's GradCAM / HiResCAM return for a target layer.
    """
    mode = INTERP[raw.ndim - 1]
    up = F.interpolate(torch.from_numpy(raw)[:, None], size=tuple(size), mode=mode,
                       align_corners=False)[:, 0].numpy()
    flat = up.reshape(len(up), -1)
    lo, hi = flat.min(1), flat.max(1)
    span = hi - lo
    safe = np.where(span > 0, span, 1.0)
    cams = (flat - lo[:, None]) / safe[:, None]
    cams[span <= 0] = 0.0
    return cams.reshape(up.shape), span


def assert_close(got, ref, what: str, rtol: float = RTOL, scale: float | None = None,
                 floor: float = 0.0):
    """|got - ref| <= rtol * scale + floor + ATOL everywhere; scale defaults to max|ref|.

    The message locates the worst entry.
    """
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != reference {ref.shape}"
    assert np.isfinite(ref).all(), f"{what}: the torch reference is not finite"
    assert np.isfinite(got).all(), f"{what}: non-finite values"
    if scale is None:
        scale = float(np.abs(ref).max()) if ref.size else 0.0
    err = np.abs(got - ref)
    bound = rtol * scale + floor + ATOL
    worst = float(err.max()) if err.size else 0.0
    if worst > bound:
        at = np.unravel_index(int(err.argmax()), err.shape)
        raise AssertionError(
            f"{what}: max |got - ref| = {worst:.3g} > {bound:.3g} (rtol {rtol} of "
            f"{scale:.3g}) at {at}: got {got[at]:.6g}, ref {ref[at]:.6g}; "
            f"{int((err > bound).sum())}/{err.size} entries off"
        )


def check_against_reference(exp, net: Net, x: np.ndarray, layers: list[str], targets=None,
                            check_cams: bool = True, min_cam_items: int = 0):
    """Compare logits, A, G, raw Grad-CAM / HiResCAM and (optionally) the final maps.

    Returns the number of (method, layer, item) normalised maps that were compared: maps
    are compared where the item's upsampled range is not dominated by float32 rounding
    (e.g. Grad-CAM weights below an InstanceNorm are ~0 by construction, the map is noise).
    """
    logits_ref, ids, ref = reference(net, x, layers, targets)
    logits, per_layer = exp.activations_and_gradients(x, targets=targets, layers=layers)
    assert_close(logits, logits_ref, "logits")
    if targets is None:
        # the explained class is the arg-max; make sure both sides agree on it
        assert (logits.argmax(1) == ids).all(), "predicted classes differ from torch"
    for name in layers:
        a_ref, g_ref = ref[name]
        assert name in per_layer, f"no entry {name!r} in per_layer ({list(per_layer)})"
        a, g = per_layer[name]
        assert_close(a, a_ref, f"activations of {name!r}")
        assert_close(g, g_ref, f"gradients of {name!r}")

    res = exp.explain(x, targets=targets, layers=layers, methods=["gradcam", "hirescam"])
    assert (res.targets == ids).all()
    compared = 0
    for name in layers:
        a_ref, g_ref = ref[name]
        for method, ref_fn in (("gradcam", ref_gradcam), ("hirescam", ref_hirescam)):
            pre, magnitude = ref_fn(a_ref, g_ref)
            raw_ref = np.maximum(pre, 0.0)
            assert_close(res.raw(method, name), raw_ref, f"raw {method} of {name!r}",
                         scale=float(np.abs(pre).max()), floor=1e-5 * magnitude)
            if not check_cams:
                continue
            cams_ref, span = ref_upsampled_minmax(raw_ref, x.shape[2:])
            cams = res.cam(method, name)
            assert cams.shape == cams_ref.shape, f"{method} CAM of {name!r}: shape"
            keep = span > 1e-2 * magnitude
            if keep.any():
                err = float(np.abs(cams[keep] - cams_ref[keep]).max())
                assert err <= CAM_ATOL, (
                    f"{method} CAM of {name!r}: max |got - ref| = {err:.3g} > {CAM_ATOL}")
            compared += int(keep.sum())
    assert compared >= min_cam_items, f"only {compared} CAMs were well-conditioned"
    return compared
