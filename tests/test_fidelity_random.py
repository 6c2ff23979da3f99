"""Property test: random small CNNs, explained by onnx-cam and by torch autograd, must agree.

Hypothesis assembles 1D / 2D / 3D models from random blocks (convolutions with random
kernel / stride / padding / dilation / groups, BatchNorm, activations, max / average pools
with random parameters, residual additions, two-branch concatenations, F.interpolate in
each mode, reflect / replicate padding, strided or reversed slicing, element-wise maximum /
minimum of two branches), a random head
(global average / max pool, flatten + linear, mean / amax over space) and an optional final
softmax / sigmoid / log-softmax. Each model is exported by Explainer(module, example_input=x)
and one or two of its named modules are explained; activations, gradients and raw Grad-CAM /
HiResCAM must match torch autograd to 1e-4 relative (see torch_zoo).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
hypothesis = pytest.importorskip("hypothesis")

import torch.nn.functional as F  # noqa: E402
from hypothesis import HealthCheck, assume, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402
from torch_zoo import Net, check_against_reference, randomize  # noqa: E402

import onnx_cam  # noqa: E402

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
AVGPOOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
GAP = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
GMP = (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)

ACTIVATIONS = {
    "relu": lambda c: nn.ReLU(),
    "relu6": lambda c: nn.ReLU6(),
    "leaky": lambda c: nn.LeakyReLU(0.15),
    "prelu": lambda c: nn.PReLU(c),
    "elu": lambda c: nn.ELU(0.8),
    "selu": lambda c: nn.SELU(),
    "gelu": lambda c: nn.GELU(),
    "gelu_tanh": lambda c: nn.GELU(approximate="tanh"),
    "silu": lambda c: nn.SiLU(),
    "hardswish": lambda c: nn.Hardswish(),
    "hardsigmoid": lambda c: nn.Hardsigmoid(),
    "tanh": lambda c: nn.Tanh(),
    "sigmoid": lambda c: nn.Sigmoid(),
    "softplus": lambda c: nn.Softplus(),
    "mish": lambda c: nn.Mish(),
    "celu": lambda c: nn.CELU(0.8),
}
SIZES = {1: (8, 40), 2: (5, 14), 3: (3, 7)}   # input spatial size range per dimensionality
MAX_KERNEL = {1: 5, 2: 3, 3: 3}


class Residual(nn.Module):
    def __init__(self, inner: nn.Module, act: nn.Module):
        super().__init__()
        self.inner = inner
        self.act = act

    def forward(self, x):
        return self.act(x + self.inner(x))


class Concat(nn.Module):
    def __init__(self, left: nn.Module, right: nn.Module):
        super().__init__()
        self.left = left
        self.right = right

    def forward(self, x):
        return torch.cat([self.left(x), self.right(x)], dim=1)


class Fn(nn.Module):
    """A named module applying a tensor function (F.interpolate, F.pad, slicing)."""

    def __init__(self, fn, label: str):
        super().__init__()
        self.fn, self.label = fn, label

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self):
        return self.label


class Extreme(nn.Module):
    def __init__(self, left: nn.Module, right: nn.Module, how: str):
        super().__init__()
        self.left, self.right, self.how = left, right, how

    def forward(self, x):
        return getattr(torch, self.how)(self.left(x), self.right(x))


class ReduceHead(nn.Module):
    def __init__(self, how: str, c: int, classes: int):
        super().__init__()
        self.how = how
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        dims = tuple(range(2, x.dim()))
        return self.fc(x.mean(dims) if self.how == "mean" else x.amax(dims))


def conv_out(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def pool_out(size, k, s, p, d, ceil):
    """Torch's (and onnxruntime's) pooled size, and whether ceil_mode dropped a window."""
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + p:  # the last window must start in the input
        return out - 1, True
    return out, False


@st.composite
def conv_block(draw, dim, c, spatial, first=False):
    """Conv [+ BN] [+ activation], as an nn.Sequential; returns (module, c_out, spatial_out)."""
    k = draw(st.integers(1, MAX_KERNEL[dim]))
    d = draw(st.integers(1, 2)) if k > 1 else 1
    s = draw(st.integers(1, 2))
    cout = draw(st.sampled_from([2, 3, 4, 6, 8]))
    groups = draw(st.sampled_from([g for g in (1, 2, 3, 4, 6, 8) if c % g == 0 and cout % g == 0]))
    # padding="same" exports as auto_pad=SAME_UPPER, which onnxruntime's Conv rejects when
    # dilated ("Dilation not supported for AutoPadType::SAME_UPPER"): not explainable either
    if s == 1 and d == 1 and draw(st.booleans()):
        padding, out = "same", list(spatial)
    else:
        p = draw(st.integers(0, (d * (k - 1)) // 2 + 1 if k > 1 else 0))
        padding, out = p, [conv_out(n, k, s, p, d) for n in spatial]
    assume(all(n >= 1 for n in out))
    layers = [CONV[dim - 1](c, cout, k, stride=s, padding=padding, dilation=d, groups=groups)]
    if draw(st.booleans()):
        layers.append(BN[dim - 1](cout))
    if first or draw(st.integers(0, 4)) > 0:
        layers.append(ACTIVATIONS[draw(st.sampled_from(sorted(ACTIVATIONS)))](cout))
    return nn.Sequential(*layers), cout, out


@st.composite
def pool_block(draw, dim, c, spatial):
    k = draw(st.integers(2, 3))
    s = draw(st.integers(1, k))
    ceil = draw(st.booleans())
    include_pad = False
    if draw(st.booleans()):
        d = draw(st.integers(1, 2))
        p = draw(st.integers(0, k // 2))
        module = MAXPOOL[dim - 1](k, s, padding=p, dilation=d, ceil_mode=ceil)
    else:
        d = 1
        p = draw(st.integers(0, k // 2))
        include_pad = draw(st.booleans())
        module = AVGPOOL[dim - 1](k, s, padding=p, ceil_mode=ceil,
                                  count_include_pad=include_pad)
    assume(all(n + 2 * p >= (k - 1) * d + 1 for n in spatial))
    out, dropped = zip(*[pool_out(n, k, s, p, d, ceil) for n in spatial])
    assume(all(n >= 1 for n in out))
    # refused on purpose (ONNX shape inference and ONNX Runtime size such a pool differently)
    assume(not (include_pad and any(dropped)))
    return module, c, list(out)


@st.composite
def residual_block(draw, dim, c, spatial):
    k = draw(st.sampled_from([1, 3] if dim > 1 else [1, 3, 5]))
    d = draw(st.integers(1, 2)) if k > 1 else 1
    groups = draw(st.sampled_from([g for g in (1, 2, c) if c % g == 0]))
    inner = [CONV[dim - 1](c, c, k, padding=d * (k // 2), dilation=d, groups=groups)]
    if draw(st.booleans()):
        inner.append(BN[dim - 1](c))
    act = ACTIVATIONS[draw(st.sampled_from(sorted(ACTIVATIONS)))](c)
    return Residual(nn.Sequential(*inner), act), c, list(spatial)


@st.composite
def concat_block(draw, dim, c, spatial):
    c1 = draw(st.sampled_from([2, 3, 4]))
    c2 = draw(st.sampled_from([2, 3, 4]))
    k = draw(st.sampled_from([3, 5] if dim == 1 else [3]))
    left = nn.Sequential(CONV[dim - 1](c, c1, k, padding=k // 2),
                         ACTIVATIONS[draw(st.sampled_from(sorted(ACTIVATIONS)))](c1))
    if draw(st.booleans()):
        right = nn.Sequential(MAXPOOL[dim - 1](3, 1, 1), CONV[dim - 1](c, c2, 1))
    else:
        right = CONV[dim - 1](c, c2, 1, bias=False)
    return Concat(left, right), c1 + c2, list(spatial)


@st.composite
def resample_block(draw, dim, c, spatial):
    """F.interpolate: nearest or (bi/tri)linear, by size or scale factor, align_corners."""
    mode = draw(st.sampled_from(["nearest", ("linear", "bilinear", "trilinear")[dim - 1]]))
    kwargs = {"mode": mode}
    if mode != "nearest":
        kwargs["align_corners"] = draw(st.booleans())
    cap = {1: 80, 2: 24, 3: 10}[dim]  # keeps repeated enlargements small
    if all(2 * n <= cap for n in spatial) and draw(st.booleans()):
        kwargs["scale_factor"] = 2
        out = [2 * n for n in spatial]
    else:
        out = [draw(st.integers(max(1, n // 2), max(n, min(2 * n, cap)))) for n in spatial]
        kwargs["size"] = tuple(out)
    return Fn(lambda x: F.interpolate(x, **kwargs), f"interpolate {kwargs}"), c, out


@st.composite
def border_block(draw, dim, c, spatial):
    """F.pad in reflect / replicate mode, or a strided / reversed slice of the last axis."""
    kind = draw(st.sampled_from(["reflect", "replicate", "stride", "flip"]))
    if kind in ("stride", "flip"):
        step = draw(st.integers(2, 3)) if kind == "stride" else -1
        start = draw(st.integers(0, min(1, spatial[-1] - 1)))
        fn = (lambda x: x[..., start::step]) if step > 0 else (lambda x: x.flip(-1))
        last = len(range(start, spatial[-1], step)) if step > 0 else spatial[-1]
        return Fn(fn, f"slice {start}::{step}"), c, [*spatial[:-1], last]
    limit = [n - 1 if kind == "reflect" else 2 for n in spatial]
    assume(min(limit) >= 1)
    pads = [draw(st.integers(0, min(2, lim))) for lim in reversed(limit) for _ in range(2)]
    out = [n + pads[2 * (dim - 1 - i)] + pads[2 * (dim - 1 - i) + 1]
           for i, n in enumerate(spatial)]
    return Fn(lambda x: F.pad(x, pads, mode=kind), f"pad {pads} {kind}"), c, out


@st.composite
def extreme_block(draw, dim, c, spatial):
    """torch.maximum / minimum of a conv + activation branch and a 1x1 conv branch."""
    act = ACTIVATIONS[draw(st.sampled_from(["relu", "relu6", "hardswish", "tanh"]))](c)
    left = nn.Sequential(CONV[dim - 1](c, c, 3, padding=1), act)
    return (Extreme(left, CONV[dim - 1](c, c, 1), draw(st.sampled_from(["maximum", "minimum"]))),
            c, list(spatial))


BLOCKS = {"conv": conv_block, "pool": pool_block, "residual": residual_block,
          "concat": concat_block, "resample": resample_block, "border": border_block,
          "extreme": extreme_block}
BLOCK_CHOICES = ["conv", "pool", "residual", "concat", "pool", "resample", "border",
                 "extreme"]  # pools twice as often


@st.composite
def random_cnn(draw):
    """(net, x, targets) for a random valid model, input and targets."""
    dim = draw(st.integers(1, 3))
    lo, hi = SIZES[dim]
    spatial = [draw(st.integers(lo, hi)) for _ in range(dim)]
    cin = draw(st.integers(1, 3))
    batch = draw(st.integers(2, 3))
    shape = (batch, cin, *spatial)
    blocks = []
    c = cin
    n_blocks = draw(st.integers(2, 5))
    choices = BLOCK_CHOICES
    for i in range(n_blocks):
        kind = "conv" if i == 0 else draw(st.sampled_from(choices))
        if kind == "resample":
            # interpolation makes near-copies of values, whose order float32 rounding decides
            # differently in torch and ONNX Runtime: no max (pool, maximum) after it
            choices = [k for k in choices if k not in ("pool", "extreme")]
        if i == 0:
            module, c, spatial = draw(conv_block(dim, c, spatial, first=True))
        else:
            module, c, spatial = draw(BLOCKS[kind](dim, c, spatial))
        blocks.append((f"b{i}", module))
        event(f"block {kind}: {type(module).__name__}")
    # a CAM layer needs spatial extent: keep at least one block output that has some
    assume(any(n > 1 for n in spatial) or n_blocks > 2)
    classes = draw(st.integers(2, 5))
    heads = ["gap", "flatten", "mean"] + (["gmp", "amax"] if choices == BLOCK_CHOICES else [])
    head_kind = draw(st.sampled_from(heads))
    features = c * int(np.prod(spatial))
    if head_kind == "flatten" and features > 400:
        head_kind = "gap"
    if head_kind in ("gap", "gmp"):
        pool = (GAP if head_kind == "gap" else GMP)[dim - 1](1)
        head = nn.Sequential(pool, nn.Flatten(), nn.Linear(c, classes))
    elif head_kind == "flatten":
        head = nn.Sequential(nn.Flatten(), nn.Linear(features, classes))
    else:
        head = ReduceHead(head_kind, c, classes)
    body = nn.Sequential()
    for name, module in blocks:
        body.add_module(name, module)
    body.add_module("head", head)
    final = draw(st.sampled_from([None, "Softmax", "Sigmoid", "LogSoftmax"]))
    event(f"{dim}D, head {head_kind}, final {final}")
    seed = draw(st.integers(0, 2**31 - 1))
    torch.manual_seed(seed)
    net = randomize(Net(body, final), seed)
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    try:
        with torch.no_grad():
            out = net(torch.from_numpy(x))
    except RuntimeError:  # a size constraint the strategies do not model
        assume(False)
    # a dilated MaxPool window can lie entirely in the padding: -inf in torch
    assume(bool(torch.isfinite(out).all()))
    if draw(st.booleans()):
        targets = draw(st.lists(st.integers(0, classes - 1), min_size=batch, max_size=batch))
    else:
        targets = None
    return net, x, targets


def spatial_modules(net: Net, x: np.ndarray) -> list[str]:
    """Named modules of the body (after its first conv) whose output has spatial extent."""
    shapes = {}
    hooks = [m.register_forward_hook(
        lambda mod, inp, out, name=name: shapes.__setitem__(name, tuple(out.shape)))
        for name, m in net.body.named_modules() if name and not name.startswith("head")]
    with torch.no_grad():
        net(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    return [f"body.{name}" for name, shape in shapes.items()
            if len(shape) == x.ndim and any(n > 1 for n in shape[2:])]


@settings(max_examples=int(os.environ.get("ONNX_CAM_RANDOM_EXAMPLES", 25)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.data_too_large])
@given(model=random_cnn(), data=st.data())
def test_random_cnn_matches_torch_autograd(model, data):
    net, x, targets = model
    candidates = spatial_modules(net, x)
    assume(candidates)
    exp = onnx_cam.Explainer(net, example_input=torch.from_numpy(x))
    # each module must resolve to a candidate layer; ask for the layer's own display name
    # (several modules can share one tensor, e.g. a Sequential and its last child)
    names = sorted({exp.model.resolve_layer(name).name for name in candidates})
    layers = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True),
                       label="layers")
    check_against_reference(exp, net, x, layers, targets, check_cams=True)
