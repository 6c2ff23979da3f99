"""Fidelity of activations, gradients and CAMs against torch autograd, on a zoo of models.

Each model is exported by ``Explainer(module, example_input=x)`` and explained through its
module names. The reference runs the same module in torch: forward hooks keep the named
modules' outputs, autograd gives d(sum(seed * logits)) / d(output), with the logits taken
before the final softmax / sigmoid / log-softmax. Activations, gradients and raw Grad-CAM /
HiResCAM must agree to 1e-4 of the reference's largest magnitude; the upsampled, min-max
normalised maps must agree to 1e-3 with F.interpolate(align_corners=False) + min-max (what
pytorch-grad-cam returns).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch_zoo import (  # noqa: E402
    INTERP,
    Net,
    assert_close,
    check_against_reference,
    randomize,
    reference,
)

import onnx_cam  # noqa: E402
from onnx_cam.converters import export_torch  # noqa: E402


# ----------------------------------------------------------------------------- building blocks
def conv(dim: int, *args, **kwargs) -> nn.Module:
    return (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dim - 1](*args, **kwargs)


def bn(dim: int, c: int) -> nn.Module:
    return (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dim - 1](c)


class Lambda(nn.Module):
    """A named module wrapping a tensor function (so its output can be a target layer)."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class Residual(nn.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)), no in-place ops."""

    def __init__(self, dim: int, cin: int, cout: int, stride: int = 1, act=nn.ReLU):
        super().__init__()
        self.conv1 = conv(dim, cin, cout, 3, stride, 1, bias=False)
        self.bn1 = bn(dim, cout)
        self.act1 = act()
        self.conv2 = conv(dim, cout, cout, 3, 1, 1, bias=False)
        self.bn2 = bn(dim, cout)
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(conv(dim, cin, cout, 1, stride, bias=False), bn(dim, cout)))
        self.act2 = act()

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class SharedActBlock(nn.Module):
    """torchvision BasicBlock style: ONE activation module called twice (not in place).

    The layer named after it is its last call's output, in the converter and the reference.
    """

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.post = nn.Conv2d(c, c, 1, groups=c)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.post(self.relu(self.bn2(self.conv2(out)) + x))


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of (N, C, *spatial), via permutes."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = nn.LayerNorm(c)

    def forward(self, x):
        perm = [0, *range(2, x.dim()), 1]
        back = [0, x.dim() - 1, *range(1, x.dim() - 1)]
        return self.norm(x.permute(*perm)).permute(*back)


class SqueezeExcite(nn.Module):
    def __init__(self, dim: int, c: int, r: int = 2):
        super().__init__()
        self.pool = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)[dim - 1](1)
        self.reduce = conv(dim, c, c // r, 1)
        self.act = nn.ReLU()
        self.expand = conv(dim, c // r, c, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 block: expand 1x1, depthwise 3x3, squeeze-excite, project 1x1, add."""

    def __init__(self, dim: int, c: int, expand: int = 2):
        super().__init__()
        hidden = c * expand
        self.expand = nn.Sequential(conv(dim, c, hidden, 1, bias=False), bn(dim, hidden),
                                    nn.ReLU6())
        self.depthwise = nn.Sequential(conv(dim, hidden, hidden, 3, 1, 1, groups=hidden,
                                            bias=False), bn(dim, hidden), nn.Hardswish())
        self.se = SqueezeExcite(dim, hidden)
        self.project = nn.Sequential(conv(dim, hidden, c, 1, bias=False), bn(dim, c))

    def forward(self, x):
        return x + self.project(self.se(self.depthwise(self.expand(x))))


class Inception(nn.Module):
    """Four branches concatenated along channels."""

    def __init__(self, dim: int, cin: int, c: int):
        super().__init__()
        self.b1 = nn.Sequential(conv(dim, cin, c, 1), nn.SiLU())
        self.b3 = nn.Sequential(conv(dim, cin, c, 3, padding=1), bn(dim, c), nn.ELU())
        self.dil = nn.Sequential(conv(dim, cin, c, 3, padding=2, dilation=2), nn.LeakyReLU(0.1))
        pool = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[dim - 1]
        self.pool = nn.Sequential(pool(3, 1, 1), conv(dim, cin, c, 1), nn.Tanh())

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.dil(x), self.pool(x)], dim=1)


class SpatialAttention(nn.Module):
    """Self-attention over spatial positions: (N, C, *S) -> (N, T, C) -> attention -> back."""

    def __init__(self, c: int, heads: int = 2, hand_written: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(c)
        self.hand_written = hand_written
        if hand_written:
            self.q, self.k, self.v = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)
            self.out = nn.Linear(c, c)
        else:
            self.attn = nn.MultiheadAttention(c, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, 2 * c), nn.GELU(),
                                 nn.Linear(2 * c, c))

    def forward(self, x):
        n, c, *spatial = x.shape
        t = x.flatten(2).transpose(1, 2)                      # (N, T, C)
        h = self.norm(t)
        if self.hand_written:
            q, k, v = self.q(h), self.k(h), self.v(h)
            weights = torch.softmax(q @ k.transpose(1, 2) / c ** 0.5, dim=-1)
            h = self.out(weights @ v)
        else:
            h, _ = self.attn(h, h, h, need_weights=False)
        t = t + h
        t = t + self.mlp(t)
        return t.transpose(1, 2).reshape(n, c, *spatial)


class GapHead(nn.Module):
    def __init__(self, dim: int, c: int, classes: int, pool: str = "avg"):
        super().__init__()
        adaptive = {"avg": (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d),
                    "max": (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)}
        self.pool = adaptive[pool][dim - 1](1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(x)))


class ReduceHead(nn.Module):
    """x.mean / x.amax / x.sum over the spatial axes, then a linear layer."""

    def __init__(self, c: int, classes: int, how: str):
        super().__init__()
        self.how = how
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        dims = tuple(range(2, x.dim()))
        pooled = {"mean": x.mean(dims), "amax": x.amax(dims), "sum": x.sum(dims)}[self.how]
        return self.fc(pooled)


class FlattenHead(nn.Module):
    def __init__(self, features: int, classes: int, hidden: int = 16):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(features, hidden)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc2(self.drop(self.act(self.fc1(self.flatten(x)))))


class _EmitOnnx(torch.autograd.Function):
    """Runs the torch function; exports as one ONNX node (see OnnxOp)."""

    @staticmethod
    def forward(ctx, spec, *tensors):
        return spec.fn(*tensors)

    @staticmethod
    def symbolic(g, spec, *tensors):
        return g.op(spec.op, *tensors, **spec.attrs)


class OnnxOp(nn.Module):
    """A module computing `fn(*inputs, *params)` in torch and exported as the single ONNX
    node `op` (attributes with the exporter's _i / _f suffixes): for ops the torch exporter
    decomposes (Mish, Softsign) or cannot write (GroupNormalization, ThresholdedRelu)."""

    def __init__(self, op: str, fn: Callable, params=(), **attrs):
        super().__init__()
        self.op, self.fn, self.attrs = op, fn, attrs
        self.params = nn.ParameterList([nn.Parameter(p) for p in params])

    def forward(self, *inputs):
        if torch.onnx.is_in_onnx_export():
            return _EmitOnnx.apply(self, *inputs, *self.params)
        return self.fn(*inputs, *self.params)


def resize_chain(dim: int):
    """F.interpolate in each mode: up, down, align_corners, non-integer sizes."""
    linear = INTERP[dim]
    steps = [("up", dict(scale_factor=2, mode=linear)),
             ("down", dict(size=(5,) * dim, mode="nearest")),
             ("up_ac", dict(size=(9,) * dim, mode=linear, align_corners=True)),
             ("near_up", dict(scale_factor=2.5, mode="nearest"))]
    if dim == 2:
        steps.insert(2, ("cubic", dict(size=(7, 8), mode="bicubic")))
    layers = [("stem", nn.Sequential(conv(dim, 2, 4, 3, padding=1), nn.ReLU()))]
    for i, (name, kwargs) in enumerate(steps):
        layers += [(name, Lambda(lambda x, kw=kwargs: F.interpolate(x, **kw))),
                   (f"conv{i}", nn.Sequential(conv(dim, 4, 4, 3, padding=1), nn.Tanh()))]
    return nn.Sequential(OrderedDict(layers + [("head", GapHead(dim, 4, 3))]))


class UNetBody(nn.Module):
    """Encoder-decoder with skips: ConvTranspose (kernel 3, stride 2, output_padding 1; and a
    grouped, dilated one), Resize, Concat; a classifier head over the decoder."""

    def __init__(self, dim: int):
        super().__init__()
        transposed = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[dim - 1]
        self.enc1 = nn.Sequential(conv(dim, 2, 4, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(conv(dim, 4, 6, 3, stride=2, padding=1), nn.ReLU())
        self.enc3 = nn.Sequential(conv(dim, 6, 6, 3, stride=2, padding=1), nn.ReLU())
        self.up3 = transposed(6, 6, 3, stride=2, padding=1, output_padding=1)
        self.dec2 = nn.Sequential(conv(dim, 12, 4, 3, padding=1), nn.ReLU())
        self.up2 = Lambda(lambda x: F.interpolate(x, scale_factor=2, mode=INTERP[dim]))
        self.dec1 = nn.Sequential(conv(dim, 8, 4, 3, padding=1), nn.ReLU())
        self.refine = transposed(4, 4, 3, padding=2, dilation=2, groups=2)
        self.head = GapHead(dim, 4, 3)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        d2 = self.dec2(torch.cat([self.up3(self.enc3(e2)), e2], 1))
        d1 = self.dec1(torch.cat([self.up2(d2), e1], 1))
        return self.head(self.refine(d1))


def border_pads(dim: int):
    """Reflect and replicate padding, strided / reversed slicing, repeat (Tile)."""
    pads = {1: (2, 1), 2: (1, 2, 2, 1), 3: (1, 1, 0, 2, 2, 1)}[dim]
    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(conv(dim, 2, 4, 3, padding=1), nn.ELU()),
        reflect=Lambda(lambda x: F.pad(x, pads, mode="reflect")),
        conv1=nn.Sequential(conv(dim, 4, 4, 3), nn.SiLU()),
        replicate=Lambda(lambda x: F.pad(x, pads, mode="replicate")),
        conv2=nn.Sequential(conv(dim, 4, 4, 3), nn.Tanh()),
        strided=Lambda(lambda x: x[..., ::2]),
        reverse=Lambda(lambda x: x.flip(-1)[:, :, 1::3]),
        conv3=nn.Sequential(conv(dim, 4, 4, 1), nn.GELU()),
        tile=Lambda(lambda x: x.repeat(1, 2, *[1] * (dim - 1), 3)),
        conv4=conv(dim, 8, 4, 3, padding=1),
        head=GapHead(dim, 4, 3),
    ))


class Extremes(nn.Module):
    """torch.maximum / minimum of two ReLU branches (exact ties at zero), a three-input Mean
    with broadcasting, and an einsum of the features with themselves."""

    def __init__(self, c: int):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(c, c, 1), nn.ReLU())
        self.pool = Lambda(lambda x: x.mean(2, keepdim=True))
        self.mean = OnnxOp("Mean", lambda a, b, c: (a + b + c) / 3)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        high, low = torch.maximum(a, b), torch.minimum(a, x)
        mixed = self.mean(high, low, self.pool(x))
        return torch.einsum("nchw,nchv->ncwv", mixed, x) / 8 + mixed


def extremes2d():
    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh()),
        mix=Extremes(4),
        post=nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),
        pixel=Lambda(lambda x: F.pixel_unshuffle(F.pixel_shuffle(x, 2), 2)),
        shuffled=Lambda(lambda x: F.pixel_shuffle(x, 2)),
        conv=nn.Conv2d(1, 4, 3, padding=1),
        head=GapHead(2, 4, 3),
    ))


def new_acts2d(group_norm: bool):
    """Activations and (opset 21) GroupNormalization exported as single ONNX nodes."""
    c, groups = 6, 3
    norm = nn.Identity()
    if group_norm:
        norm = OnnxOp("GroupNormalization", lambda x, w, b: F.group_norm(x, groups, w, b),
                      (1 + 0.3 * torch.randn(c), 0.2 * torch.randn(c)), num_groups_i=groups,
                      epsilon_f=1e-5)
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(2, c, 3, padding=1),
        mish=OnnxOp("Mish", F.mish),
        conv2=nn.Conv2d(c, c, 3, padding=1),
        gn=norm,
        softsign=OnnxOp("Softsign", F.softsign),
        conv3=nn.Conv2d(c, c, 3, padding=1),
        celu=nn.CELU(0.7),
        conv4=nn.Conv2d(c, c, 3, padding=1),
        thresh=OnnxOp("ThresholdedRelu", lambda x: F.threshold(x, 0.3, 0.0), alpha_f=0.3),
        head=ReduceHead(c, 4, "mean"),
    ))


# ----------------------------------------------------------------------------- the zoo

@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]            # -> body (input -> logits)
    shape: tuple[int, ...]                    # input shape, batch first
    layers: tuple[str, ...]                   # module names in the body ("body." is added)
    heads: tuple[str | None, ...] = (None,)   # final activations to test
    marks: tuple = field(default=())
    opset: int = 17


def resnet(dim: int, c: int = 6, classes: int = 5):
    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(conv(dim, 2, c, 3, 1, 1, bias=False), bn(dim, c), nn.ReLU()),
        pool=(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[dim - 1](3, 2, 1),
        layer1=Residual(dim, c, c),
        layer2=Residual(dim, c, 2 * c, stride=2),
        head=GapHead(dim, 2 * c, classes),
    ))


def shared2d():
    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.LeakyReLU(0.05)),
        block1=SharedActBlock(6),
        block2=SharedActBlock(6),
        head=GapHead(2, 6, 4),
    ))


def ceil_pool(kind: str):
    pool = {"max": nn.MaxPool2d(2, 2, padding=1, ceil_mode=True),
            "avg": nn.AvgPool2d(2, 2, padding=1, ceil_mode=True),
            "avg3": nn.AvgPool2d(3, 2, padding=1, ceil_mode=True),
            "max_dil": nn.MaxPool2d(2, 2, padding=1, dilation=2, ceil_mode=True)}[kind]
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(2, 4, 3),
        act=nn.Tanh(),
        pool=pool,
        post=nn.Conv2d(4, 4, 1),
        head=GapHead(2, 4, 3),
    ))


def mobilenet2d():
    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8),
                           nn.Hardswish()),
        block1=InvertedResidual(2, 8),
        block2=InvertedResidual(2, 8),
        head=ReduceHead(8, 4, "mean"),
    ))


def inception(dim: int, classes: int = 4):
    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(conv(dim, 2, 6, 3, padding=1), bn(dim, 6), nn.GELU()),
        mixed=Inception(dim, 6, 3),
        reduce=nn.Sequential(conv(dim, 12, 8, 3, stride=2), nn.Softplus()),
        head=GapHead(dim, 8, classes, pool="max"),
    ))


def grouped2d():
    """Grouped, strided, dilated and padding='same' (odd and even kernel) convolutions."""
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(2, 8, 3, padding="same"),
        act1=nn.PReLU(8),
        grouped=nn.Conv2d(8, 8, 3, stride=2, groups=2),
        act2=nn.LeakyReLU(0.2),
        dilated=nn.Conv2d(8, 6, 3, padding=2, dilation=2, groups=2),
        act3=nn.ELU(0.7),
        same_even=nn.Conv2d(6, 6, 4, padding="same", groups=3),
        act4=nn.SELU(),
        strided=nn.Conv2d(6, 6, (3, 2), stride=(1, 2), padding=(1, 0)),
        act5=nn.PReLU(),
        head=FlattenHead(6 * 7 * 3, 5),
    ))


def fpad(dim: int):
    """Asymmetric / causal F.pad before convolutions."""
    pads = {1: (2, 0), 2: (1, 2, 0, 1), 3: (1, 0, 0, 1, 2, 0)}[dim]
    return nn.Sequential(OrderedDict(
        conv1=nn.Sequential(conv(dim, 2, 6, 3, padding=1), nn.ReLU()),
        pad=Lambda(lambda x: F.pad(x, pads)),
        conv2=conv(dim, 6, 6, 3),
        act=nn.GELU(),
        head=GapHead(dim, 6, 3),
    ))


def pools2d():
    """MaxPool with padding / ceil_mode / dilation and AvgPool with both pad conventions."""
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(2, 6, 3, padding=1),
        act1=nn.SELU(),
        max_ceil=nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
        conv2=nn.Conv2d(6, 6, 3, padding=1),
        act2=nn.Softplus(beta=1.5),
        max_dil=nn.MaxPool2d(2, 1, dilation=2),
        avg_excl=nn.AvgPool2d(3, 2, padding=1, count_include_pad=False, ceil_mode=True),
        conv3=nn.Conv2d(6, 6, 3, padding=1),
        act3=nn.Mish(),
        avg_incl=nn.AvgPool2d(3, 1, padding=1, count_include_pad=True),
        avg_ceil=nn.AvgPool2d(2, 2, ceil_mode=True),
        head=ReduceHead(6, 4, "amax"),
    ))


def norms2d():
    """GroupNorm, channel LayerNorm, InstanceNorm and smooth activations."""
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(2, 8, 3, padding=1),
        gn=nn.GroupNorm(2, 8),
        gelu_tanh=nn.GELU(approximate="tanh"),
        conv2=nn.Conv2d(8, 8, 3, padding=1),
        ln=ChannelLayerNorm(8),
        silu=nn.SiLU(),
        conv3=nn.Conv2d(8, 8, 1),
        inorm=nn.InstanceNorm2d(8, affine=True),
        tanh=nn.Tanh(),
        conv4=nn.Conv2d(8, 6, 3, stride=2, padding=1),
        sigmoid=nn.Sigmoid(),
        head=ReduceHead(6, 3, "sum"),
    ))


def hard_acts2d():
    """Piecewise activations with kinks (ReLU6, Hardswish, Hardsigmoid) and Dropout layers."""
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 8, 3, padding=1),
        relu6=nn.ReLU6(),
        drop=nn.Dropout2d(0.3),
        conv2=nn.Conv2d(8, 8, 3, padding=1),
        hswish=nn.Hardswish(),
        conv3=nn.Conv2d(8, 8, 3, padding=1),
        hsig=nn.Hardsigmoid(),
        conv4=nn.Conv2d(8, 4, 3, stride=2),
        gelu=nn.GELU(),
        drop2=nn.Dropout(0.2),
        head=FlattenHead(4 * 7 * 7, 6),
    ))


def attention(dim: int, hand_written: bool):
    c = 8
    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(conv(dim, 2, c, 3, padding=1), bn(dim, c), nn.ReLU()),
        down=conv(dim, c, c, 3, stride=2, padding=1),
        attn=SpatialAttention(c, hand_written=hand_written),
        post=nn.Sequential(conv(dim, c, c, 3, padding=1), nn.GELU()),
        head=GapHead(dim, c, 4),
    ))


def tcn1d():
    """Causal dilated convs (pad both sides, chomp the end by slicing), residuals, 1D pools."""

    class Causal(nn.Module):
        def __init__(self, c: int, dilation: int):
            super().__init__()
            self.chomp = 2 * dilation
            self.conv = nn.Conv1d(c, c, 3, padding=2 * dilation, dilation=dilation)
            self.bn = nn.BatchNorm1d(c)
            self.act = nn.GELU()

        def forward(self, x):
            return x + self.act(self.bn(self.conv(x)[:, :, :-self.chomp]))

    return nn.Sequential(OrderedDict(
        stem=nn.Conv1d(3, 8, 5, padding=2),
        block1=Causal(8, 1),
        block2=Causal(8, 2),
        pool=nn.MaxPool1d(3, 2, padding=1, ceil_mode=True),
        block3=Causal(8, 4),
        avg=nn.AvgPool1d(3, 2, padding=1, count_include_pad=False),
        conv=nn.Conv1d(8, 8, 3, groups=4),
        act=nn.SiLU(),
        head=GapHead(1, 8, 5),
    ))


def misc3d():
    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(nn.Conv3d(1, 6, 3, padding=1), nn.GroupNorm(3, 6), nn.Hardswish()),
        depthwise=nn.Conv3d(6, 6, 3, padding=2, dilation=2, groups=6),
        act=nn.ELU(),
        pool=nn.AvgPool3d(2, 2, ceil_mode=True),
        mixed=Inception(3, 6, 2),
        head=ReduceHead(8, 3, "amax"),
    ))


CASES: dict[str, Case] = {
    "resnet1d": Case(lambda: resnet(1), (3, 2, 24), ("stem", "layer1", "layer2.conv2",
                                                   "layer2"), ("Softmax", None)),
    "resnet2d": Case(lambda: resnet(2), (3, 2, 16, 16),
                     ("stem.0", "stem", "layer1.bn1", "layer1", "layer2.act1", "layer2"),
                     ("Softmax", "Sigmoid", "LogSoftmax", None)),
    "resnet3d": Case(lambda: resnet(3), (3, 2, 8, 8, 8), ("stem", "layer1", "layer2"),
                     ("Softmax", None)),
    "shared2d": Case(shared2d, (3, 3, 12, 12), ("stem", "block1.relu", "block1.conv2",
                                                 "block2.bn1", "block2")),
    "mobilenet2d": Case(mobilenet2d, (4, 3, 16, 16),
                        ("stem", "block1.depthwise", "block1.se", "block1", "block2"),
                        ("Sigmoid", None)),
    "inception1d": Case(lambda: inception(1), (3, 2, 20), ("stem", "mixed", "reduce"),
                        ("LogSoftmax",)),
    "inception2d": Case(lambda: inception(2), (3, 2, 12, 12),
                        ("stem", "mixed.dil", "mixed", "reduce"), (None, "Softmax")),
    "grouped2d": Case(grouped2d, (3, 2, 16, 16),
                      ("conv1", "act1", "grouped", "act3", "same_even", "act4", "strided",
                       "act5"),
                      ("LogSoftmax", None)),
    "pools2d": Case(pools2d, (3, 2, 17, 15),
                    ("act1", "max_ceil", "act2", "max_dil", "avg_excl", "act3", "avg_incl",
                     "avg_ceil"), (None, "Softmax")),
    "norms2d": Case(norms2d, (3, 2, 12, 12),
                    ("conv1", "gn", "gelu_tanh", "ln", "silu", "inorm", "tanh", "sigmoid"),
                    (None, "Sigmoid")),
    "hard_acts2d": Case(hard_acts2d, (4, 3, 16, 16),
                        # relu6 / drop and gelu / drop2 are one tensor each (eval Dropout)
                        ("relu6", "hswish", "hsig", "drop2"), (None, "Softmax")),
    "mha1d": Case(lambda: attention(1, False), (3, 2, 16), ("attn", "post"), ("Softmax",)),
    "mha2d": Case(lambda: attention(2, False), (3, 2, 8, 8), ("attn", "post"), (None,)),
    # below nn.MultiheadAttention: the gradient must cross its q/k/v split
    "mha_below2d": Case(lambda: attention(2, False), (3, 2, 8, 8), ("stem", "down"),
                        ("Sigmoid",)),
    "qkv2d": Case(lambda: attention(2, True), (3, 2, 8, 8), ("stem", "attn", "post"),
                  ("Softmax", None)),
    "tcn1d": Case(tcn1d, (4, 3, 32),
                  ("stem", "block1", "block2.conv", "block2", "pool", "block3", "avg", "act"),
                  (None, "Softmax")),
    "fpad1d": Case(lambda: fpad(1), (3, 2, 16), ("conv1", "pad", "act"), (None,)),
    "fpad2d": Case(lambda: fpad(2), (3, 2, 10, 9), ("conv1", "pad", "act"), ("Softmax",)),
    "fpad3d": Case(lambda: fpad(3), (2, 2, 6, 5, 4), ("conv1", "pad", "act"), (None,)),
    # ceil_mode pools whose last window would start in the end padding (dropped by torch)
    "ceil_max2d": Case(lambda: ceil_pool("max"), (2, 2, 9, 9), ("conv", "act"), (None,)),
    "ceil_avg2d": Case(lambda: ceil_pool("avg"), (2, 2, 9, 9), ("conv", "act"), (None,)),
    "ceil_names2d": Case(lambda: ceil_pool("max"), (2, 2, 9, 9), ("act", "pool", "post"),
                         (None,)),
    # ceil_mode with count_include_pad, no dropped window: ONNX and onnxruntime agree
    "ceil_incl_pad2d": Case(lambda: ceil_pool("avg3"), (2, 2, 10, 10), ("act", "pool"),
                            (None,)),
    "ceil_dil_max2d": Case(lambda: ceil_pool("max_dil"), (2, 2, 10, 10), ("act", "pool"),
                           (None,)),
    "resize1d": Case(lambda: resize_chain(1), (2, 2, 6), ("stem", "conv0", "conv1", "conv2")),
    "resize2d": Case(lambda: resize_chain(2), (2, 2, 5, 6),
                     ("stem", "conv0", "conv1", "conv2", "conv3")),
    "resize3d": Case(lambda: resize_chain(3), (2, 2, 3, 4, 3), ("stem", "conv1", "conv2")),
    "unet1d": Case(lambda: UNetBody(1), (2, 2, 16), ("enc3", "up3", "dec2", "dec1", "refine")),
    "unet2d": Case(lambda: UNetBody(2), (2, 2, 8, 12), ("enc3", "up3", "dec2", "up2", "dec1"),
                   (None, "Softmax")),
    "unet3d": Case(lambda: UNetBody(3), (2, 2, 8, 4, 8), ("enc2", "up3", "dec1", "refine")),
    "pads1d": Case(lambda: border_pads(1), (2, 2, 13), ("stem", "conv1", "conv2", "conv3")),
    "pads2d": Case(lambda: border_pads(2), (2, 2, 9, 10), ("stem", "conv1", "conv2", "conv3")),
    "pads3d": Case(lambda: border_pads(3), (2, 2, 5, 6, 7), ("stem", "conv2", "conv3")),
    "extremes2d": Case(extremes2d, (3, 2, 6, 6), ("stem", "mix.a", "mix", "post")),
    "acts18": Case(lambda: new_acts2d(False), (2, 2, 7, 6),
                   ("conv1", "mish", "softsign", "celu", "conv4"), opset=18),
    "acts_gn21": Case(lambda: new_acts2d(True), (2, 2, 7, 6), ("conv1", "gn", "conv3"),
                      opset=21),
    "misc3d": Case(misc3d, (3, 1, 8, 8, 8), ("stem", "depthwise", "act", "pool", "mixed"),
                   (None, "LogSoftmax")),
}

PARAMS = [
    pytest.param(name, head, id=f"{name}-{head or 'nohead'}", marks=list(case.marks))
    for name, case in CASES.items() for head in case.heads
]


@functools.cache
def built(name: str, head: str | None):
    """(net, x, explainer) for a zoo case; cached per worker, models never change."""
    case = CASES[name]
    seed = sum(map(ord, name))
    torch.manual_seed(seed)
    net = randomize(Net(case.build(), head), seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.shape).astype(np.float32)
    if case.opset == 17:
        exp = onnx_cam.Explainer(net, example_input=torch.from_numpy(x))
    else:
        exp = onnx_cam.Explainer(export_torch(net, torch.from_numpy(x), opset=case.opset))
    return net, x, exp


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize(("name", "head"), PARAMS)
@pytest.mark.parametrize("targets", ["random", "predicted"])
def test_matches_torch_autograd(name, head, targets):
    net, x, exp = built(name, head)
    assert exp.head == head
    layers = [f"body.{layer}" for layer in CASES[name].layers]
    if targets == "random":
        rng = np.random.default_rng(sum(map(ord, name)) + 1)
        ids = rng.integers(0, exp.num_classes, len(x)).tolist()
    else:
        ids = None
    check_against_reference(exp, net, x, layers, ids, check_cams=True)


@pytest.mark.parametrize("name", ["resnet2d", "mobilenet2d", "grouped2d", "norms2d"])
def test_cams_match_pytorch_grad_cam_convention(name):
    """2D, no final activation: the normalised maps are those pytorch-grad-cam returns."""
    net, x, exp = built(name, None)
    rng = np.random.default_rng(7)
    ids = rng.integers(0, exp.num_classes, len(x)).tolist()
    layers = [f"body.{layer}" for layer in CASES[name].layers]
    check_against_reference(exp, net, x, layers, ids, check_cams=True,
                            min_cam_items=len(x))


def test_single_target_for_all_items_and_batching():
    """One int target for every item; batch_size smaller than the batch."""
    net, x, exp = built("resnet2d", "Softmax")
    x = np.concatenate([x, x[::-1] * 0.5])
    logits, per_layer = exp.activations_and_gradients(x, targets=2, layers=["body.layer1"],
                                                      batch_size=2)
    logits_ref, _, ref = reference(net, x, ["body.layer1"], targets=2)
    assert_close(logits, logits_ref, "logits")
    assert_close(per_layer["body.layer1"][0], ref["body.layer1"][0], "activations")
    assert_close(per_layer["body.layer1"][1], ref["body.layer1"][1], "gradients")


def test_maxpool_ties_after_relu_follow_torch():
    """MaxPool over ReLU zeros: exact ties. Torch routes the gradient to the first maximum
    of each window (row-major scan); onnx-cam must pick the same tap, so the gradient at the
    ReLU output matches exactly, zeros included."""
    body = nn.Sequential(OrderedDict(
        conv=nn.Conv2d(1, 4, 3, padding=1),
        relu=nn.ReLU(),
        pool=nn.MaxPool2d(3, 2, padding=1),
        conv2=nn.Conv2d(4, 4, 3, padding=1),
        head=GapHead(2, 4, 3),
    ))
    torch.manual_seed(3)
    net = randomize(Net(body), 3)
    with torch.no_grad():
        net.body.conv.bias.fill_(-1.0)  # most of the map is negative: many all-zero windows
    x = np.random.default_rng(3).standard_normal((3, 1, 10, 10)).astype(np.float32)
    exp = onnx_cam.Explainer(net, example_input=torch.from_numpy(x))
    check_against_reference(exp, net, x, ["body.relu", "body.pool"], [0, 1, 2],
                            check_cams=False)


def test_adaptive_max_and_amax_ties():
    """Global max over a channel with repeated maxima: AdaptiveMaxPool gives the whole
    gradient to the first maximum, amax shares it equally between the maxima (as torch)."""

    class Body(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.clip = nn.Hardtanh(-1.0, 0.5)  # saturates: many maxima at exactly 0.5
            self.ident = nn.Identity()
            self.gmp = nn.AdaptiveMaxPool2d(1)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            h = self.ident(self.clip(self.conv(x)))
            return self.fc(torch.cat([self.gmp(h).flatten(1), h.amax((2, 3))], 1))

    torch.manual_seed(5)
    net = randomize(Net(Body()), 5)
    x = 2 * np.random.default_rng(5).standard_normal((3, 1, 8, 8)).astype(np.float32)
    exp = onnx_cam.Explainer(net, example_input=torch.from_numpy(x))
    check_against_reference(exp, net, x, ["body.clip"], [0, 1, 2], check_cams=False)


def test_per_layer_keys_are_the_requested_names():
    """Results are keyed by the names asked for, not by the layer's shortest alias."""
    net, x, exp = built("hard_acts2d", None)
    _, per_layer = exp.activations_and_gradients(x, layers=["body.relu6", "body.hswish"])
    assert set(per_layer) == {"body.relu6", "body.hswish"}
    res = exp.explain(x, layers=["body.drop2", "body.relu6"])
    assert res.raw("gradcam", "body.drop2").shape == (len(x), 7, 7)


def test_per_layer_keys_for_two_names_of_one_tensor():
    net, x, exp = built("hard_acts2d", None)
    _, per_layer = exp.activations_and_gradients(x, layers=["body.relu6", "body.drop"])
    assert set(per_layer) == {"body.relu6", "body.drop"}
    np.testing.assert_array_equal(per_layer["body.relu6"][1], per_layer["body.drop"][1])


@pytest.mark.parametrize("opset", [18, 20])
def test_newer_opsets(opset):
    """Opset 18 takes reduction axes as an input; opset 20 exports GELU as a Gelu op (exact
    and tanh), so the Gelu rule is exercised (opset 17 decomposes it into Erf / Tanh)."""
    class Body(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
            self.gelu = nn.GELU()
            self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
            self.gelu_tanh = nn.GELU(approximate="tanh")
            self.ln = ChannelLayerNorm(6)
            self.pool = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)
            self.gmp = nn.AdaptiveMaxPool2d(1)
            self.fc = nn.Linear(18, 4)

        def forward(self, x):
            h = self.ln(self.gelu_tanh(self.conv2(self.gelu(self.conv1(x)))))
            h = self.pool(h)
            pooled = [self.gmp(h).flatten(1), h.mean((2, 3)), h.amax((2, 3))]
            return self.fc(torch.cat(pooled, 1))

    torch.manual_seed(opset)
    net = randomize(Net(Body(), "Softmax"), opset)
    x = np.random.default_rng(opset).standard_normal((3, 2, 11, 10)).astype(np.float32)
    proto = export_torch(net, torch.from_numpy(x), opset=opset)
    ops = {node.op_type for node in proto.graph.node}
    if opset >= 20:
        assert "Gelu" in ops
    exp = onnx_cam.Explainer(proto)
    assert exp.head == "Softmax"
    check_against_reference(exp, net, x, ["body.conv1", "body.gelu", "body.gelu_tanh",
                                          "body.ln", "body.pool"], [3, 0, 1])


class TokensOfUnknownLength(nn.Module):
    """LayerNorm and a mean over an axis whose size shape inference cannot resolve: the
    reshape target comes from Shape(x) with a symbolic batch (as in timm's MobileViT)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.ln = nn.LayerNorm(30)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        tokens = self.ln(self.conv(x).reshape(x.shape[0], 4, -1))
        return self.fc(tokens.mean(2))


def test_layer_norm_and_mean_over_dynamic_axes(monkeypatch):
    # onnx_cam.graph.batch_shapes makes this reshape static; the rules must not need it
    import onnx_cam.model
    monkeypatch.setattr(onnx_cam.model, "resolve_batch_shapes", lambda graph, batch: False)
    torch.manual_seed(11)
    net = randomize(Net(TokensOfUnknownLength()), 11)
    x = np.random.default_rng(11).standard_normal((3, 2, 5, 6)).astype(np.float32)
    exp = onnx_cam.Explainer(net, example_input=torch.from_numpy(x))
    ln = next(n for n in exp.model.graph((5, 6)).nodes if n.op == "LayerNormalization")
    assert not isinstance(ln.inputs[0].shape[-1], int)  # the case this test is about
    check_against_reference(exp, net, x, ["body.conv"], [0, 2, 1], check_cams=False)


def test_a_failing_rule_is_reported_with_its_node(monkeypatch):
    """A rule meeting a form it did not foresee (here a TypeError) is refused cleanly."""
    from onnx_cam.errors import UnsupportedModelError
    from onnx_cam.graph.rules import RULES

    def broken(b, node, grads, wants):
        raise TypeError("unsupported operand type(s)")

    net, x, _ = built("resnet2d", None)
    exp = onnx_cam.Explainer(net, example_input=torch.from_numpy(x))  # no cached session
    monkeypatch.setitem(RULES, "GlobalAveragePool", broken)
    with pytest.raises(UnsupportedModelError, match=r"GlobalAveragePool node .*TypeError"):
        exp.activations_and_gradients(x, targets=0, layers=["body.layer1"])


class AdaptivePoolNet(nn.Module):
    """AdaptiveAvgPool2d((3, 3)) on a 7x7 map: the windows overlap (7 is not a multiple of
    3), which the dynamo exporter writes as a GatherND reading some positions twice, then a
    mean; the legacy exporter refuses it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d((3, 3))
        self.fc = nn.Linear(36, 3)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


@pytest.mark.slow  # the dynamo exporter takes seconds
def test_adaptive_pool_with_overlapping_windows_gather_nd(tmp_path):
    import onnx

    torch.manual_seed(12)
    net = randomize(Net(AdaptivePoolNet()), 12)
    x = np.random.default_rng(12).standard_normal((3, 2, 7, 7)).astype(np.float32)
    path = tmp_path / "adaptive.onnx"
    torch.onnx.export(net, (torch.from_numpy(x),), str(path), dynamo=True,
                      dynamic_shapes={"x": {0: torch.export.Dim("N")}}, input_names=["x"])
    assert "GatherND" in {n.op_type for n in onnx.load(str(path)).graph.node}
    exp = onnx_cam.Explainer(path)
    check_against_reference(exp, net, x, ["body.act", "body.conv"], [0, 2, 1])
