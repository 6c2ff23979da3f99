"""Kernels vs independent references (numpy, torch.nn.functional.interpolate, matplotlib)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from onnx_cam.kernels import (
    colorize,
    colormap_lut,
    elementwise_channel_sum,
    normalize_minmax,
    overlay,
    resize,
    resize_normalize,
    spatial_mean,
    weighted_channel_sum,
)

SETTINGS = settings(max_examples=30, deadline=None)
MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}

spatial_shapes = st.integers(1, 3).flatmap(lambda r: st.tuples(*[st.integers(1, 7)] * r))
seeds = st.integers(0, 2**32 - 1)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _torch_resize(x: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
    mode = MODES[len(out_shape)]
    return F.interpolate(t, size=out_shape, mode=mode, align_corners=False)[:, 0].numpy()


def _minmax_reference(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x - min) / (max - min) per item in float32; zeros when max - min == 0."""
    flat = maps.reshape(len(maps), -1).astype(np.float32)
    mn = flat.min(axis=1, keepdims=True)  # NaN-propagating
    mx = flat.max(axis=1, keepdims=True)
    span = mx - mn
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(span == 0, np.float32(0), (flat - mn) / span)
    return norm.reshape(maps.shape), np.concatenate([mn, mx], axis=1)


# ----------------------------------------------------------------------------- reductions


@SETTINGS
@given(n=st.integers(1, 3), c=st.integers(1, 6), spatial=spatial_shapes, seed=seeds)
def test_weighted_channel_sum_matches_einsum(n, c, spatial, seed):
    rng = _rng(seed)
    acts = rng.standard_normal((n, c, *spatial)).astype(np.float32)
    weights = rng.standard_normal((n, c)).astype(np.float32)
    got = weighted_channel_sum(acts, weights)
    a64, w64 = acts.astype(np.float64), weights.astype(np.float64)
    ref = np.maximum(np.einsum("nc...,nc->n...", a64, w64), 0.0)
    bound = np.einsum("nc...,nc->n...", np.abs(a64), np.abs(w64))
    assert got.dtype == np.float32 and got.shape == (n, *spatial)
    assert np.all(np.abs(got - ref) <= 1e-6 * (1.0 + bound))


@SETTINGS
@given(n=st.integers(1, 3), c=st.integers(1, 6), spatial=spatial_shapes, seed=seeds)
def test_elementwise_channel_sum_matches_numpy(n, c, spatial, seed):
    rng = _rng(seed)
    acts = rng.standard_normal((n, c, *spatial)).astype(np.float32)
    grads = rng.standard_normal((n, c, *spatial)).astype(np.float32)
    got = elementwise_channel_sum(acts, grads)
    prod = acts.astype(np.float64) * grads.astype(np.float64)
    ref = np.maximum(prod.sum(axis=1), 0.0)
    assert got.dtype == np.float32 and got.shape == (n, *spatial)
    assert np.all(np.abs(got - ref) <= 1e-6 * (1.0 + np.abs(prod).sum(axis=1)))


def test_channel_sums_large_spatial_blocks():
    """More elements than one parallel block, so several jobs share an item."""
    rng = _rng(0)
    acts = rng.standard_normal((2, 3, 10, 1000)).astype(np.float32)
    weights = rng.standard_normal((2, 3)).astype(np.float32)
    ref = np.maximum(np.einsum("nchw,nc->nhw", acts, weights), 0)
    np.testing.assert_allclose(weighted_channel_sum(acts, weights), ref, rtol=1e-5, atol=1e-5)
    ref = np.maximum((acts * weights[..., None, None]).sum(1), 0)
    got = elementwise_channel_sum(acts, np.broadcast_to(weights[..., None, None], acts.shape))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(n=st.integers(1, 3), c=st.integers(1, 6), spatial=spatial_shapes, seed=seeds)
def test_spatial_mean_matches_numpy(n, c, spatial, seed):
    rng = _rng(seed)
    x = (rng.standard_normal((n, c, *spatial)) * 10 + 3).astype(np.float32)
    got = spatial_mean(x)
    ref = x.astype(np.float64).reshape(n, c, -1).mean(axis=2)
    assert got.dtype == np.float32 and got.shape == (n, c)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_spatial_mean_accumulates_in_float64():
    x = np.full((1, 1, 4096, 1024), 0.1, dtype=np.float32)
    x[0, 0, 0, 0] = 1e7
    ref = x.astype(np.float64).mean()
    assert spatial_mean(x)[0, 0] == np.float32(ref)


def test_reductions_empty_batch_and_channels():
    assert weighted_channel_sum(np.zeros((0, 3, 4, 5)), np.zeros((0, 3))).shape == (0, 4, 5)
    np.testing.assert_array_equal(weighted_channel_sum(np.zeros((2, 0, 4)), np.zeros((2, 0))), 0)
    assert elementwise_channel_sum(np.zeros((0, 2, 3)), np.zeros((0, 2, 3))).shape == (0, 3)
    assert spatial_mean(np.zeros((0, 2, 3, 3, 3))).shape == (0, 2)


def test_relu_and_nan_propagation():
    acts = np.array([[[1.0, -1.0, np.nan]]], dtype=np.float32)
    got = weighted_channel_sum(acts, np.ones((1, 1), np.float32))
    np.testing.assert_array_equal(got, [[1.0, 0.0, np.nan]])
    got = elementwise_channel_sum(acts, acts)
    np.testing.assert_array_equal(got, [[1.0, 1.0, np.nan]])


@pytest.mark.parametrize(
    "call",
    [
        lambda: weighted_channel_sum(np.zeros((2, 3)), np.zeros((2, 3))),  # no spatial axis
        lambda: weighted_channel_sum(np.zeros((1, 2, 2, 2, 2, 2)), np.zeros((1, 2))),  # 4D
        lambda: weighted_channel_sum(np.zeros((2, 3, 4)), np.zeros((1, 3))),  # N mismatch
        lambda: weighted_channel_sum(np.zeros((2, 3, 4)), np.zeros((2, 4))),  # C mismatch
        lambda: weighted_channel_sum(np.zeros((2, 3, 0)), np.zeros((2, 3))),  # empty spatial
        lambda: elementwise_channel_sum(np.zeros((2, 3, 4)), np.zeros((2, 3, 5))),
        lambda: spatial_mean(np.zeros((2, 3))),
        lambda: resize(np.zeros((2, 4, 4)), (8,)),  # out_shape rank mismatch
        lambda: resize(np.zeros((2, 4, 4)), (8, 0)),  # non-positive size
        lambda: resize(np.zeros((2,)), (8,)),  # no spatial axis
        lambda: resize(np.zeros((1, 2, 2, 2, 2)), (2, 2, 2, 2)),  # 4 spatial axes
        lambda: resize_normalize(np.zeros((2, 4)), (3, 3)),
        lambda: normalize_minmax(np.zeros((3,))),
        lambda: colorize(np.zeros(3), cmap="no-such-colormap"),
        lambda: overlay(np.zeros((4, 4, 3)), np.zeros((2, 5, 5))),  # image/cams mismatch
        lambda: overlay(np.zeros((4, 4, 3), dtype=np.int64), np.zeros((4, 4))),  # dtype
        lambda: overlay(np.zeros((4, 4, 3)), np.zeros((4, 4)), alpha=1.5),
    ],
)
def test_validation_errors(call):
    with pytest.raises(ValueError):
        call()


# ----------------------------------------------------------------------------------- resize


resize_cases = st.integers(1, 3).flatmap(
    lambda r: st.tuples(st.tuples(*[st.integers(1, 9)] * r), st.tuples(*[st.integers(1, 20)] * r))
)


@SETTINGS
@given(case=resize_cases, n=st.integers(1, 3), seed=seeds)
def test_resize_matches_torch(case, n, seed):
    in_shape, out_shape = case
    x = _rng(seed).standard_normal((n, *in_shape)).astype(np.float32)
    got = resize(x, out_shape)
    assert got.dtype == np.float32 and got.shape == (n, *out_shape)
    np.testing.assert_allclose(got, _torch_resize(x, out_shape), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("in_shape", "out_shape"),
    [
        ((40,), (5000,)),  # 1D up
        ((5000,), (37,)),  # 1D down
        ((13,), (13,)),  # 1D equal
        ((7, 7), (224, 224)),  # 2D up
        ((224, 224), (7, 7)),  # 2D down
        ((9, 11), (9, 11)),  # 2D equal
        ((5, 30), (17, 4)),  # 2D mixed
        ((4, 14, 14), (16, 112, 112)),  # 3D up
        ((16, 30, 12), (3, 7, 5)),  # 3D down
        ((3, 5, 6), (3, 5, 6)),  # 3D equal
        ((1, 1, 1), (4, 5, 6)),  # single voxel
        ((1,), (9,)),
    ],
)
def test_resize_fixed_cases_match_torch(in_shape, out_shape):
    x = _rng(7).standard_normal((2, *in_shape)).astype(np.float32)
    got = resize(x, out_shape)
    np.testing.assert_allclose(got, _torch_resize(x, out_shape), rtol=1e-5, atol=1e-5)
    if in_shape == out_shape:
        np.testing.assert_array_equal(got, x)


def test_resize_accepts_int_and_list_shapes_and_float64():
    x = _rng(1).standard_normal((2, 6))
    np.testing.assert_array_equal(resize(x, 10), resize(x.astype(np.float32), (10,)))
    y = _rng(2).standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(resize(y, [5, 6]), resize(y, (5, 6)))


def test_resize_zero_weight_nan_does_not_leak():
    """Equal sizes give weights (1, 0): a NaN stays where it is (torch would smear it)."""
    x = _rng(5).standard_normal((2, 4, 5, 6)).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    got = resize(x, (4, 5, 6))
    np.testing.assert_array_equal(got, x)
    assert np.isnan(got).sum() == 1


def test_resize_empty_batch():
    assert resize(np.zeros((0, 3, 3), np.float32), (5, 5)).shape == (0, 5, 5)
    cams, ranges = resize_normalize(np.zeros((0, 3), np.float32), (5,))
    assert cams.shape == (0, 5) and ranges.shape == (0, 2)


@SETTINGS
@given(case=resize_cases, n=st.integers(1, 3), seed=seeds)
def test_resize_normalize_matches_torch_then_minmax(case, n, seed):
    in_shape, out_shape = case
    x = _rng(seed).standard_normal((n, *in_shape)).astype(np.float32)
    ref = _torch_resize(x, out_shape)
    ref_norm, ref_ranges = _minmax_reference(ref)
    cams, ranges = resize_normalize(x, out_shape)
    assert cams.shape == (n, *out_shape) and ranges.shape == (n, 2)
    np.testing.assert_allclose(ranges, ref_ranges, rtol=1e-5, atol=1e-5)
    # Compare against the formula applied to our own (torch-equal within 1e-5) resized map,
    # so near-constant maps do not amplify the ulp-level resize differences.
    own_norm, own_ranges = _minmax_reference(resize(x, out_shape))
    np.testing.assert_array_equal(ranges, own_ranges)
    np.testing.assert_allclose(cams, own_norm, rtol=1e-6, atol=1e-6)
    well_spread = (ref_ranges[:, 1] - ref_ranges[:, 0]) > 0.1
    np.testing.assert_allclose(cams[well_spread], ref_norm[well_spread], atol=1e-4)


def test_resize_normalize_constant_and_nan_items():
    x = _rng(3).standard_normal((4, 5, 6)).astype(np.float32)
    x[1] = 2.5  # constant item
    x[2, 3, 4] = np.nan  # NaN item
    cams, ranges = resize_normalize(x, (11, 13))
    np.testing.assert_array_equal(cams[1], 0.0)
    np.testing.assert_array_equal(ranges[1], [2.5, 2.5])
    assert np.isnan(cams[2]).all() and np.isnan(ranges[2]).all()
    ok = [0, 3]
    ref_norm, ref_ranges = _minmax_reference(_torch_resize(x[ok], (11, 13)))
    np.testing.assert_allclose(cams[ok], ref_norm, atol=1e-5)
    np.testing.assert_allclose(ranges[ok], ref_ranges, atol=1e-5)
    assert np.isfinite(cams[ok]).all() and cams[ok].min() == 0.0 and cams[ok].max() == 1.0


# -------------------------------------------------------------------------------- normalize


@SETTINGS
@given(n=st.integers(1, 4), spatial=spatial_shapes, seed=seeds, const=st.booleans())
def test_normalize_minmax_matches_formula(n, spatial, seed, const):
    rng = _rng(seed)
    maps = (rng.standard_normal((n, *spatial)) * 5).astype(np.float32)
    if const:
        maps[0] = np.float32(-1.25)
    before = maps.copy()
    got, ranges = normalize_minmax(maps)
    ref, ref_ranges = _minmax_reference(maps)
    np.testing.assert_array_equal(maps, before)  # input untouched
    np.testing.assert_array_equal(ranges, ref_ranges)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
    assert np.isfinite(got).all() and got.min() >= 0.0 and got.max() <= 1.0


def test_normalize_minmax_nan_isolated():
    maps = np.array([[[1.0, 2.0], [3.0, 5.0]], [[1.0, np.nan], [0.0, 4.0]]], np.float32)
    got, ranges = normalize_minmax(maps)
    np.testing.assert_allclose(got[0], [[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_array_equal(ranges[0], [1.0, 5.0])
    assert np.isnan(got[1]).all() and np.isnan(ranges[1]).all()


def test_normalize_minmax_constant_is_zero():
    got, ranges = normalize_minmax(np.full((2, 3, 4, 5), 7.0))
    np.testing.assert_array_equal(got, 0.0)
    np.testing.assert_array_equal(ranges, [[7.0, 7.0], [7.0, 7.0]])


# --------------------------------------------------------------------------------- colormap

# Quantisation (matplotlib's Colormap.__call__ with bytes=True, N = 256):
# index = int(v * 256) computed in float32 (truncation), v == 1 -> 255, v < 0 -> "under",
# v > 1 -> "over", NaN -> "bad".
EDGE_VALUES = np.array(
    [
        0.0,
        1.0,
        np.nextafter(np.float32(1), np.float32(0)),
        0.5,
        1 / 256,
        255 / 256,
        np.nextafter(np.float32(1 / 256), np.float32(0)),
        -0.1,
        -1e-9,
        1.0001,
        7.0,
        np.nan,
    ],
    dtype=np.float32,
)


@pytest.mark.parametrize("name", ["jet", "viridis", "gray", "inferno", "coolwarm"])
def test_colorize_matches_matplotlib(name):
    rng = _rng(4)
    values = np.concatenate(
        [
            np.arange(256, dtype=np.float32) / np.float32(255),
            EDGE_VALUES,
            rng.random(1000, dtype=np.float32),
        ]
    )
    values = values.reshape(2, 2, -1)
    ref = matplotlib.colormaps[name](values, bytes=True)[..., :3]
    got = colorize(values, cmap=name)
    assert got.dtype == np.uint8 and got.shape == (*values.shape, 3)
    np.testing.assert_array_equal(got, ref)


@SETTINGS
@given(spatial=spatial_shapes, seed=seeds)
def test_colorize_random_shapes(spatial, seed):
    values = _rng(seed).random((2, *spatial), dtype=np.float32)
    ref = matplotlib.colormaps["jet"](values, bytes=True)[..., :3]
    np.testing.assert_array_equal(colorize(values), ref)


def test_colorize_resamples_small_colormaps_and_accepts_objects():
    values = np.linspace(0, 1, 300, dtype=np.float32)
    cmap = matplotlib.colormaps["tab10"]
    ref = cmap.resampled(256)(values, bytes=True)[..., :3]
    np.testing.assert_array_equal(colorize(values, cmap="tab10"), ref)
    np.testing.assert_array_equal(colorize(values, cmap=cmap), ref)
    assert colormap_lut("jet").shape == (259, 4)


def _overlay_reference(image, cams, alpha, name, channels):
    """Numpy formula, float32: out = floor((1 - a) * pixel + a * colour + 0.5)."""
    rgba = matplotlib.colormaps[name](cams.astype(np.float32), bytes=True).astype(np.float32)
    a = np.float32(alpha) * (rgba[..., 3:] / np.float32(255))
    img = np.asarray(image)
    if img.dtype == np.uint8:
        pix = img.astype(np.float32)
    else:
        pix = np.clip(img.astype(np.float32) * np.float32(255), 0, 255)
    if channels is None:
        pix = pix[..., None]
    pix = pix[..., :3]
    out = np.floor((np.float32(1) - a) * pix + a * rgba[..., :3] + np.float32(0.5))
    return np.clip(out, 0, 255).astype(np.uint8)


@SETTINGS
@given(
    n=st.integers(1, 3),
    hw=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    channels=st.sampled_from([None, 1, 3, 4]),
    as_uint8=st.booleans(),
    per_item=st.booleans(),
    alpha=st.floats(0.0, 1.0),
    name=st.sampled_from(["jet", "viridis"]),
    seed=seeds,
)
def test_overlay_matches_formula(n, hw, channels, as_uint8, per_item, alpha, name, seed):
    # A shared grayscale image whose last axis could be channels is ambiguous (documented).
    assume(per_item or channels is not None or hw[1] not in (1, 3, 4))
    rng = _rng(seed)
    cams = rng.random((n, *hw), dtype=np.float32)
    shape = ((n,) if per_item else ()) + hw + (() if channels is None else (channels,))
    # A shared colour image shaped exactly like the maps is read as grayscale (documented).
    assume(per_item or shape != cams.shape)
    image = rng.uniform(-0.1, 1.1, shape)  # float64, partly out of [0, 1] (clipped)
    if as_uint8:
        image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    got = overlay(image, cams, alpha=alpha, cmap=name)
    assert got.dtype == np.uint8 and got.shape == (n, *hw, 3)
    np.testing.assert_array_equal(got, _overlay_reference(image, cams, alpha, name, channels))


def test_overlay_extremes_and_nan():
    img = np.full((2, 2, 3), 100, dtype=np.uint8)
    cams = np.array([[0.0, 1.0], [0.5, np.nan]], dtype=np.float32)
    np.testing.assert_array_equal(overlay(img, cams, alpha=0.0), img)
    np.testing.assert_array_equal(
        overlay(img[:1, :1], cams[:1, :1], alpha=1.0)[0, 0], colorize(0.0)
    )
    # NaN takes the colormap's "bad" colour, which is transparent: the image shows through.
    np.testing.assert_array_equal(overlay(img, cams, alpha=0.7)[1, 1], [100, 100, 100])
