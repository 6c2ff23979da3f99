"""Sanity checks, map similarity and class statistics; the planted 1D case; cascading
randomisation on a trained model. References are direct loops or scipy.stats written here."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from scipy import stats
from torch import nn

import onnx_cam
from onnx_cam.converters import export_torch
from onnx_cam.metrics import (
    ClassStatistics,
    cascading_randomization,
    evaluate,
    parameter_layers,
    randomize,
    spearman,
    ssim,
)


# ---- similarity ------------------------------------------------------------------------------
def test_spearman_matches_scipy(rng):
    a = rng.random((6, 7, 5))
    b = a + rng.normal(0, 0.3, a.shape)
    b[2] = np.round(b[2], 1)                      # ties: average ranks
    b[3] = 0.5                                    # constant: no ranking, NaN
    got = spearman(a, b)
    for i in range(len(a)):
        ref = stats.spearmanr(a[i].ravel(), b[i].ravel()).statistic if i != 3 else np.nan
        np.testing.assert_allclose(got[i], ref, atol=1e-12)


def ssim_loop(a: np.ndarray, b: np.ndarray, sigma=1.5, radius=5, c1=1e-4, c2=9e-4) -> float:
    """Wang et al.'s mean SSIM by explicit Gaussian windows, borders mirrored (d c b a | a b c
    d), the window's radius left out at each border of an axis longer than the window."""
    shape = a.shape
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()

    def mirror(i, n):
        while i < 0 or i >= n:
            i = -i - 1 if i < 0 else 2 * n - i - 1
        return i

    values = []
    for p in itertools.product(*map(range, shape)):
        if any(n > 2 * radius and not radius <= i < n - radius for i, n in zip(p, shape)):
            continue
        ma = mb = saa = sbb = sab = 0.0
        for off in itertools.product(range(-radius, radius + 1), repeat=len(shape)):
            w = np.prod([taps[o + radius] for o in off])
            q = tuple(mirror(i + o, n) for i, o, n in zip(p, off, shape))
            ma += w * a[q]
            mb += w * b[q]
            saa += w * a[q] ** 2
            sbb += w * b[q] ** 2
            sab += w * a[q] * b[q]
        va, vb, cov = saa - ma ** 2, sbb - mb ** 2, sab - ma * mb
        values.append((2 * ma * mb + c1) * (2 * cov + c2)
                      / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


@pytest.mark.parametrize("shape, sigma", [((40,), 1.5), ((14, 15), 1.5), ((4, 5, 6), 0.7)])
def test_ssim_matches_a_window_loop(shape, sigma, rng):
    a = rng.random((2, *shape))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    got = ssim(a, b, sigma=sigma)
    radius = int(3.5 * sigma + 0.5)   # the window: 11 samples at sigma 1.5, 5 at 0.7
    for i in range(2):
        assert got[i] == pytest.approx(ssim_loop(a[i], b[i], sigma, radius), abs=1e-10)
    np.testing.assert_allclose(ssim(a, a), 1.0)


# ---- class statistics ------------------------------------------------------------------------
def test_class_statistics_match_direct_formulas(rng):
    maps = rng.random((20, 4, 5))
    labels = rng.integers(0, 3, 20)
    labels[:3] = [0, 1, 2]
    accumulated = ClassStatistics().add(maps[:7], labels[:7]).add(maps[7:], labels[7:])
    for k in range(3):
        chosen = [m for m, label in zip(maps, labels) if label == k]
        mean = sum(chosen) / len(chosen)
        std = np.sqrt(sum((m - mean) ** 2 for m in chosen) / len(chosen))
        np.testing.assert_allclose(accumulated.mean(k), mean, atol=1e-12)
        np.testing.assert_allclose(accumulated.std(k), std, atol=1e-7)
        assert accumulated.count(k) == len(chosen)
    expected = [np.sqrt(np.mean((m - accumulated.mean(label)) ** 2))
                for m, label in zip(maps, labels)]
    np.testing.assert_allclose(accumulated.distance(maps, labels), expected, atol=1e-12)
    with pytest.raises(onnx_cam.OnnxCamError, match="No map of class 7"):
        accumulated.mean(7)
    with pytest.raises(onnx_cam.OnnxCamError, match="align maps by input position"):
        accumulated.add(rng.random((2, 5, 5)), [0, 1])


# ---- parameter layers and randomisation ---------------------------------------------------
def conv_bn_net() -> nn.Sequential:
    net = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(),
                        nn.Conv1d(4, 6, 3, padding=1, bias=False), nn.BatchNorm1d(6), nn.ReLU(),
                        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(6, 3))
    with torch.no_grad():   # trained-looking BatchNorms (fresh ones are exported shared)
        for bn in (net[1], net[4]):
            for t in (bn.weight, bn.bias, bn.running_mean):
                t.normal_()
            bn.running_var.uniform_(0.5, 2)
    return net.eval()


def test_parameter_layers_group_weights_bias_and_norm_top_first():
    torch.manual_seed(0)
    proto = export_torch(conv_bn_net(), torch.randn(2, 2, 20))
    layers = parameter_layers(proto)
    assert [set(p.initializers) for p in layers] == [
        {"8.weight", "8.bias"}, {"3.weight", "4.weight", "4.bias"},
        {"0.weight", "0.bias", "1.weight", "1.bias"}]   # running statistics are not learnt


@pytest.mark.parametrize("mode", ["normal", "shuffle"])
def test_randomize_redraws_only_the_chosen_layers(mode):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(2, 64, 3), nn.ReLU(), nn.Conv1d(64, 64, 3), nn.ReLU(),
                        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(64, 3)).eval()
    proto = export_torch(net, torch.randn(2, 2, 20))
    before = {t.name: numpy_helper.to_array(t).copy() for t in proto.graph.initializer}
    top_two = parameter_layers(proto)[:2]
    changed = randomize(proto, top_two, seed=1, mode=mode)
    after = {t.name: numpy_helper.to_array(t) for t in changed.graph.initializer}
    redrawn = {name for p in top_two for name in p.initializers}
    assert redrawn == {"6.weight", "6.bias", "2.weight", "2.bias"}
    for name, values in before.items():
        np.testing.assert_array_equal(numpy_helper.to_array(
            next(t for t in proto.graph.initializer if t.name == name)), values)  # untouched
        if name not in redrawn:
            np.testing.assert_array_equal(after[name], values)
            continue
        assert not np.allclose(after[name], values)
        if mode == "shuffle":
            np.testing.assert_array_equal(np.sort(after[name], axis=None),
                                          np.sort(values, axis=None))
        elif values.size > 1000:
            assert after[name].mean() == pytest.approx(values.mean(), abs=0.01)
            assert after[name].std() == pytest.approx(values.std(), rel=0.05)
    onnx.checker.check_model(changed)


# ---- a trained model: cascading randomisation, random labels ---------------------------------
def bumps(n: int, rng: np.random.Generator, length: int = 64):
    """Three classes of 9-sample patterns (bump, dip, step) at random places in noise."""
    x = rng.normal(0, 0.5, (n, 1, length)).astype(np.float32)
    y = rng.integers(0, 3, n)
    patterns = [np.hanning(9), -np.hanning(9), np.r_[np.ones(4), -np.ones(5)]]
    for i, at in enumerate(rng.integers(8, length - 8, n)):
        x[i, 0, at - 4:at + 5] += 2 * patterns[y[i]]
    return x, y


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = nn.Sequential(nn.Conv1d(1, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(),
                        nn.Conv1d(8, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU(),
                        nn.MaxPool1d(2), nn.Conv1d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, 3))
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny batches: threads only contend on a shared machine
    try:
        for _ in range(80):
            x, y = bumps(64, rng)
            loss = nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    net.eval()
    x, y = bumps(12, rng)
    with torch.no_grad():
        accuracy = (net(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    exp = onnx_cam.Explainer(net, example_input=torch.from_numpy(x))
    res = exp.explain(x, targets=y.tolist(), layers="7", methods="gradcam")
    return exp, x, res, accuracy


def test_cascading_randomization_decorrelates_the_maps(trained):
    exp, x, res, accuracy = trained
    assert accuracy >= 0.9       # the model has learnt the patterns: its maps mean something
    cascade = cascading_randomization(exp, x, res, seed=0)
    assert cascade.layers == ["/11/Gemm", "/7/Conv", "/3/Conv", "/0/Conv"]
    assert cascade.spearman.shape == cascade.ssim.shape == (4, len(res))
    same = onnx_cam.Explainer(randomize(exp.model.proto, [])).explain(
        x, targets=res.targets.tolist(), layers="7", methods="gradcam").cam()
    np.testing.assert_allclose(spearman(res.cam(), same), 1.0, atol=1e-6)  # nothing redrawn
    # every step leaves the maps far from the trained model's: Adebayo's check passes
    assert (np.nanmean(cascade.spearman, axis=1) < 0.6).all()
    assert (cascade.ssim.mean(axis=1) < 0.5).all()
    # evaluate's randomization_* is the cascade's last step (every layer redrawn)
    values = evaluate(exp, x, res, ["randomization_spearman", "randomization_ssim"], seed=0)
    np.testing.assert_allclose(values["randomization_spearman"], cascade.spearman[-1])
    np.testing.assert_allclose(values["randomization_ssim"], cascade.ssim[-1])


def test_random_label_maps_differ_from_the_target_maps(trained):
    exp, x, res, _ = trained
    values = evaluate(exp, x, res, ["random_label_spearman", "random_label_ssim"], seed=2)
    # which labels were drawn: recompute each row's maps for every other class; the value
    # must be the similarity to one of them
    cams = res.cam()
    for r in range(len(res)):
        others = [c for c in range(3) if c != res.targets[r]]
        maps = exp.explain(x[[r] * 2], targets=others, layers="7", methods="gradcam").cam()
        with np.errstate(invalid="ignore"):
            rho = [spearman(cams[r][None], m[None])[0] for m in maps]
        assert np.isclose(values["random_label_spearman"][r], rho, atol=1e-6,
                          equal_nan=True).any()
        assert np.isclose(values["random_label_ssim"][r], ssim(np.stack([cams[r]] * 2), maps),
                          atol=1e-6).any()
    assert np.nanmean(values["random_label_spearman"]) < 0.5


def test_class_distance_uses_the_rows_or_given_statistics(trained):
    exp, x, res, _ = trained
    own = evaluate(exp, x, res, "class_distance")["class_distance"]
    reference = ClassStatistics().add(res.cam(), res.targets)
    np.testing.assert_allclose(own, reference.distance(res.cam(), res.targets))
    shifted = ClassStatistics().add(np.zeros_like(res.cam()), res.targets)
    given = evaluate(exp, x, res, "class_distance", class_stats=shifted)["class_distance"]
    np.testing.assert_allclose(given, np.sqrt((res.cam() ** 2).mean(axis=1)), atol=1e-6)


# ---- the planted case --------------------------------------------------------------------------
class Gate(nn.Module):
    """Multiplies by a fixed 0 / 1 mask: only samples start..stop reach the score."""

    def __init__(self, length: int, start: int, stop: int):
        super().__init__()
        mask = torch.zeros(1, 1, length)
        mask[..., start:stop] = 1
        self.register_buffer("mask", mask)

    def forward(self, h):
        return h * self.mask


def test_planted_window_beats_a_random_map():
    length = 1000
    conv, head = nn.Conv1d(1, 1, 5, padding=2), nn.Linear(1, 2)
    with torch.no_grad():      # smoothing, then p(class 1) = sigmoid(40 * mean - 2)
        conv.weight.fill_(0.2)
        conv.bias.zero_()
        head.weight.copy_(torch.tensor([[0.0], [40.0]]))
        head.bias.copy_(torch.tensor([0.0, -2.0]))
    model = nn.Sequential(conv, nn.ReLU(), Gate(length, 100, 200), nn.AdaptiveAvgPool1d(1),
                          nn.Flatten(), head, nn.Softmax(dim=1)).eval()
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.3, (6, 1, length)).astype(np.float32)
    x[:, :, 100:200] += 1.0          # the evidence, inside the window
    x[:, :, 500:700] += 2.0          # a stronger pattern the model never sees
    exp = onnx_cam.Explainer(model, example_input=torch.from_numpy(x))
    res = exp.explain(x, targets=1, layers="2", methods=["gradcam", "hirescam"])
    assert (res.probs[:, 1] > 0.8).all()
    for method in ("gradcam", "hirescam"):
        inside = res.cam(method)[:, 100:200].mean()
        assert inside > 20 * res.cam(method)[:, np.r_[0:95, 205:length]].mean()
        v = evaluate(exp, x, res, ["deletion", "deletion_random", "insertion",
                                   "insertion_random", "road", "road_random"], method=method,
                     baseline="zero", step=0.05)
        assert (v["deletion"] < 0.5 * v["deletion_random"]).all()
        assert (v["insertion"] > v["insertion_random"] + 0.2).all()
        assert (v["road"] > v["road_random"] + 0.1).all()
