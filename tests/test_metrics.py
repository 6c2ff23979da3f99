"""Faithfulness metrics against direct, slow re-implementations written here.

Every reference below runs the torch model itself (not ONNX Runtime), builds each perturbed
input position by position, imputes by a dense numpy.linalg.solve and integrates by explicit
trapezoids, so a shared mistake with onnx_cam.metrics would have to be made twice.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from conftest import small_cnn
from road_reference import reference_impute
from torch import nn

import onnx_cam
from onnx_cam.cli import main
from onnx_cam.metrics import (
    MetricError,
    evaluate,
    linear_impute,
    multigrid,
    neighbour_stencil,
)

SHAPES = {1: (40,), 2: (12, 12), 3: (6, 8, 8)}


@pytest.fixture(scope="module", params=[1, 2, 3], ids=["1d", "2d", "3d"])
def setup(request):
    dims = request.param
    torch.manual_seed(dims)
    model = small_cnn(dims, nn.Softmax(dim=1))
    x = torch.randn(3, 2, *SHAPES[dims]).numpy()
    exp = onnx_cam.Explainer(model, example_input=torch.from_numpy(x))
    res = exp.explain(x, targets=[0, 1, 2], methods="hirescam")
    return model, x, exp, res


# ---- slow references -------------------------------------------------------------------
def torch_probs(model, inputs) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(inputs, np.float32))).double().numpy()


def ranking(cam: np.ndarray, most_first: bool) -> list[tuple]:
    """Positions from most (or least) relevant, ties by position."""
    positions = list(itertools.product(*map(range, cam.shape)))
    sign = -1 if most_first else 1
    return sorted(positions, key=lambda p: (sign * cam[p], np.ravel_multi_index(p, cam.shape)))


def blur(item: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Separable Gaussian over the spatial axes, borders mirrored (d c b a | a b c d)."""
    radius = int(truncate * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = item.astype(np.float64)
    for axis in range(1, item.ndim):
        pad = [(0, 0)] * item.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        n = item.shape[axis]
        out = sum(w * np.take(padded, np.arange(n) + i, axis=axis) for i, w in enumerate(taps))
    return out


def replaced(item: np.ndarray, removed_positions: list[tuple], baseline: str,
             sigma: float) -> np.ndarray:
    """The item with the given positions replaced, one position at a time."""
    removed = np.zeros(item.shape[1:], bool)
    for p in removed_positions:
        removed[p] = True
    if baseline == "interp":
        return reference_impute(item, removed)
    fill = {"zero": lambda: np.zeros_like(item, np.float64),
            "mean": lambda: np.broadcast_to(
                item.mean(axis=tuple(range(1, item.ndim)), keepdims=True), item.shape),
            "blur": lambda: blur(item, sigma)}[baseline]()
    out = item.astype(np.float64).copy()
    for p in removed_positions:
        out[(slice(None), *p)] = fill[(slice(None), *p)]
    return out


def reference_auc(model, x, res, step, baseline, order, insertion, sigma=1.5):
    cams = res.cam()
    aucs = []
    for r in range(len(res)):
        item, cam, target = x[res.items[r]], cams[r], res.targets[r]
        ranked = ranking(cam, most_first=order == "morf")
        n = len(ranked)
        fractions, scores = [], []
        k = 0
        while True:
            f = min(k * step, 1.0)
            count = round(f * n)
            chosen = ranked[:count]
            removed = ranked[count:] if insertion else chosen
            scores.append(torch_probs(model, replaced(item, removed, baseline, sigma)[None])[
                0, target])
            fractions.append(count / n)
            if f >= 1.0:
                break
            k += 1
        aucs.append(sum((fractions[i + 1] - fractions[i]) * (scores[i] + scores[i + 1]) / 2
                        for i in range(len(scores) - 1)))
    return np.array(aucs)


# ---- imputation ----------------------------------------------------------------------------
def test_stencil_2d_is_roads():
    offsets, weights = neighbour_stencil(2)
    road = {(1, 1): 1 / 12, (0, 1): 1 / 6, (-1, 1): 1 / 12, (1, -1): 1 / 12, (0, -1): 1 / 6,
            (-1, -1): 1 / 12, (1, 0): 1 / 6, (-1, 0): 1 / 6}   # pytorch-grad-cam's road.py
    assert {tuple(o): w for o, w in zip(offsets.tolist(), weights)} == pytest.approx(road)


@pytest.mark.parametrize("shape", [(30,), (7, 9), (4, 5, 6), (12, 14)])
@pytest.mark.parametrize("pattern", ["scattered", "blob"])
@pytest.mark.parametrize("solver", ["multigrid", "direct"])
def test_linear_impute_solves_the_dense_system(shape, pattern, solver, rng, monkeypatch):
    if solver == "direct":   # 2D / 3D when conjugate gradients do not converge (1D: always)
        monkeypatch.setattr(multigrid, "MAX_ITERATIONS", 0)
    item = rng.normal(size=(3, *shape)).astype(np.float32)
    if pattern == "scattered":
        removed = rng.random(shape) < 0.6
    else:  # all but one corner: long distances to the known values, the hardest system
        removed = np.ones(shape, bool)
        removed[(slice(0, 2),) * len(shape)] = False
    np.testing.assert_allclose(linear_impute(item, removed), reference_impute(item, removed),
                               atol=1e-5)


def test_linear_impute_is_linear_interpolation_in_1d(rng):
    item = rng.normal(size=(2, 50))
    removed = rng.random(50) < 0.5
    removed[:3] = removed[-4:] = True   # beyond the kept samples: constant, as np.interp
    kept = np.flatnonzero(~removed)
    expected = np.stack([np.interp(np.arange(50), kept, channel[kept]) for channel in item])
    np.testing.assert_allclose(linear_impute(item, removed), expected, atol=1e-10)


def test_linear_impute_noise_and_edge_cases(rng):
    item = rng.normal(size=(2, 40, 40))
    removed = rng.random((40, 40)) < 0.5
    clean = linear_impute(item, removed)
    noisy = linear_impute(item, removed, noise=0.3, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(noisy[:, ~removed], item[:, ~removed])
    assert np.std(noisy[:, removed] - clean[:, removed]) == pytest.approx(0.3, rel=0.05)
    np.testing.assert_array_equal(linear_impute(item, np.zeros((40, 40), bool)), item)
    everything = linear_impute(item, np.ones((40, 40), bool))
    np.testing.assert_allclose(everything, np.broadcast_to(item.mean(axis=(1, 2))[:, None, None],
                                                           item.shape))


# ---- deletion / insertion ------------------------------------------------------------------
@pytest.mark.parametrize("baseline, order, insertion", [
    ("zero", "morf", False), ("mean", "lerf", False), ("blur", "morf", True),
    ("interp", "morf", False),
])
def test_curves_match_a_slow_loop(setup, baseline, order, insertion):
    model, x, exp, res = setup
    if baseline == "interp" and x.ndim == 5:
        pytest.skip("the 3D dense reference is covered by test_linear_impute_*")
    name = "insertion" if insertion else "deletion"
    got = evaluate(exp, x, res, [name], step=0.125, baseline=baseline, order=order,
                   blur_sigma=1.5, batch_size=5)[name]
    ref = reference_auc(model, x, res, 0.125, baseline, order, insertion)
    np.testing.assert_allclose(got, ref, atol=2e-5)


def test_batching_does_not_change_values(setup):
    _, x, exp, res = setup
    one = evaluate(exp, x, res, ["deletion", "road", "avg_drop"], step=0.2, batch_size=1)
    many = evaluate(exp, x, res, ["deletion", "road", "avg_drop"], step=0.2, batch_size=64)
    for name in one:
        np.testing.assert_allclose(one[name], many[name], atol=1e-6)


# ---- ROAD and confidence ---------------------------------------------------------------------
def test_road_matches_a_slow_loop(setup):
    model, x, exp, res = setup
    fractions = (0.25, 0.5, 0.75)
    got = evaluate(exp, x, res, ["road", "road_morf", "road_lerf"], road_fractions=fractions,
                   road_noise=0.0, score="logits")
    logits = model[:-1]
    cams = res.cam()
    for r in range(len(res)):
        item, target = x[res.items[r]], res.targets[r]
        original = torch_probs(logits, item[None])[0, target]
        means = {}
        for order in ("morf", "lerf"):
            ranked = ranking(cams[r], most_first=order == "morf")
            scores = [torch_probs(logits, replaced(item, ranked[:round(f * len(ranked))],
                                                   "interp", 0)[None])[0, target]
                      for f in fractions]
            means[order] = np.mean(scores) - original
        assert got["road_morf"][r] == pytest.approx(means["morf"], abs=1e-4)
        assert got["road_lerf"][r] == pytest.approx(means["lerf"], abs=1e-4)
        assert got["road"][r] == pytest.approx((means["lerf"] - means["morf"]) / 2, abs=1e-4)


def test_road_noise_is_seeded(setup):
    _, x, exp, res = setup
    a = evaluate(exp, x, res, "road", seed=3)["road"]
    b = evaluate(exp, x, res, "road", seed=3, batch_size=2)["road"]
    c = evaluate(exp, x, res, "road", seed=4)["road"]
    np.testing.assert_allclose(a, b, atol=1e-7)
    assert not np.allclose(a, c, atol=1e-7)


def test_confidence_matches_a_slow_loop(setup):
    model, x, exp, res = setup
    got = evaluate(exp, x, res, ["avg_drop", "avg_increase"])
    cams = res.cam()
    for r in range(len(res)):
        item, target = x[res.items[r]], res.targets[r]
        y = torch_probs(model, item[None])[0, target]
        masked = item.astype(np.float64).copy()
        for p in itertools.product(*map(range, cams[r].shape)):
            masked[(slice(None), *p)] *= cams[r][p]
        o = torch_probs(model, masked[None])[0, target]
        assert got["avg_drop"][r] == pytest.approx(max(0.0, y - o) / y, abs=1e-5)
        assert got["avg_increase"][r] == float(o > y)


def test_foils_score_target_minus_foil(setup):
    model, x, exp, _ = setup
    res = exp.explain(x, targets=[[0, 1]] * len(x), foils=2, methods="gradcam")
    got = evaluate(exp, x, res, ["avg_drop"], score="logits")["avg_drop"]
    logits, cams = model[:-1], res.cam()
    for r in range(len(res)):
        item, t, f = x[res.items[r]], res.targets[r], res.foils[r]
        y = torch_probs(logits, item[None])[0]
        o = torch_probs(logits, (item * cams[r][None])[None])[0]
        y, o = y[t] - y[f], o[t] - o[f]
        expected = max(0.0, y - o) / y if y > 0 else np.nan
        np.testing.assert_allclose(got[r], expected, atol=1e-4)


# ---- layouts, random maps, API errors --------------------------------------------------------
class ChannelsLast(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):               # (N, T, C) -> the channels-first body
        return self.body(x.transpose(1, 2))


def test_channels_last_model_gives_the_same_values(rng):
    torch.manual_seed(0)
    body = small_cnn(1, nn.Softmax(dim=1))
    x = rng.normal(size=(3, 2, 40)).astype(np.float32)
    first = onnx_cam.Explainer(body, example_input=torch.from_numpy(x))
    x_last = np.ascontiguousarray(x.transpose(0, 2, 1))
    last = onnx_cam.Explainer(ChannelsLast(body), example_input=torch.from_numpy(x_last),
                              channels_last=True)
    metrics = ["deletion", "insertion", "road", "avg_drop"]
    a = evaluate(first, x, first.explain(x, targets=1), metrics, step=0.1)
    b = evaluate(last, x_last, last.explain(x_last, targets=1), metrics, step=0.1)
    for name in metrics:
        np.testing.assert_allclose(a[name], b[name], atol=1e-5)


def test_random_map_baseline_is_seeded_and_differs(setup):
    _, x, exp, res = setup
    a = evaluate(exp, x, res, ["deletion", "deletion_random"], step=0.2, seed=1)
    b = evaluate(exp, x, res, ["deletion_random"], step=0.2, seed=1)
    np.testing.assert_array_equal(a["deletion_random"], b["deletion_random"])
    assert not np.allclose(a["deletion"], a["deletion_random"])


@pytest.mark.parametrize("call, words", [
    (lambda e, x, r: evaluate(e, x, r, ["nope"]), "Unknown metric"),
    (lambda e, x, r: evaluate(e, x, r, ["deletion"], stepp=0.1), "Unknown metric option"),
    (lambda e, x, r: evaluate(e, x, r, ["deletion"], step=0), "step=0"),
    (lambda e, x, r: evaluate(e, x, r, ["deletion"], baseline="noise"), "baseline='noise'"),
    (lambda e, x, r: evaluate(e, x, r, ["deletion"], baseline=np.zeros(5)), "broadcast"),
    (lambda e, x, r: evaluate(e, x[:1], r, ["deletion"]), "pass the x that was explained"),
    (lambda e, x, r: evaluate(e, x[..., :-1], r, ["deletion"]), "size along axis 2"),
])
def test_errors_say_what_to_do(cnn1d, call, words):
    model, x, _ = cnn1d
    exp = onnx_cam.Explainer(model, example_input=x)
    res = exp.explain(x.numpy())
    with pytest.raises(onnx_cam.OnnxCamError, match=words):
        call(exp, x.numpy(), res)


def test_items_with_nan_get_nan_values_and_leave_the_others_alone(cnn1d):
    model, x, _ = cnn1d
    exp = onnx_cam.Explainer(model, example_input=x)
    x = x.numpy().copy()
    clean = evaluate(exp, x, exp.explain(x, targets=1), ["deletion", "road", "avg_drop",
                                                         "deletion_random"], step=0.2)
    x[1, 0, 5] = np.nan
    with pytest.warns(Warning, match="NaN or Inf"):
        res = exp.explain(x, targets=1, nonfinite="flag")
    got = evaluate(exp, x, res, ["deletion", "road", "avg_drop", "deletion_random"], step=0.2)
    for name, values in got.items():
        assert np.isnan(values[1])
        np.testing.assert_allclose(values[[0, 2, 3, 4]], clean[name][[0, 2, 3, 4]], atol=1e-6)


def test_regression_model_defaults_to_its_output(rng):
    torch.manual_seed(0)
    model = small_cnn(1, classes=1)
    x = rng.normal(size=(2, 2, 40)).astype(np.float32)
    exp = onnx_cam.Explainer(model, example_input=torch.from_numpy(x))
    res = exp.explain(x)
    assert np.isfinite(evaluate(exp, x, res, ["deletion"])["deletion"]).all()
    with pytest.raises(MetricError, match="score='logits'"):
        evaluate(exp, x, res, ["deletion"], score="probs")


# ---- the command -----------------------------------------------------------------------------
def test_cli_evaluate_writes_the_function_api_values(cnn1d, tmp_path, capsys):
    model, x, data = cnn1d
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    np.save(tmp_path / "x.npy", x.numpy())
    assert main(["explain", str(path), str(tmp_path / "x.npy"), "--out", str(tmp_path / "e"),
                 "--method", "hirescam", "--target", "1", "--quiet"]) == 0
    out = tmp_path / "m"
    code = main(["evaluate", str(path), str(tmp_path / "x.npy"), "--cams",
                 str(tmp_path / "e" / "cams.npz"), "--out", str(out), "--metric", "deletion",
                 "--metric", "road", "--step", "0.1", "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((out / "metrics.json").read_text())
    assert printed == written and written["metrics"] == ["deletion", "road"]
    exp = onnx_cam.Explainer(path)
    direct = evaluate(exp, x.numpy(), exp.explain(x.numpy(), targets=1, methods="hirescam"),
                      ["deletion", "road"], step=0.1)
    np.testing.assert_allclose([r["deletion"] for r in written["rows"]], direct["deletion"],
                               atol=1e-6)
    assert written["mean"]["road"] == pytest.approx(direct["road"].mean(), abs=1e-6)
    # without --cams it explains first and keeps the maps
    assert main(["evaluate", str(path), str(tmp_path / "x.npy"), "--out", str(tmp_path / "n"),
                 "--metric", "avg_drop"]) == 0
    assert (tmp_path / "n" / "cams.npz").exists() and "avg_drop" in capsys.readouterr().out
    assert main(["evaluate", str(path), str(tmp_path / "x.npy"), "--out", str(tmp_path / "b"),
                 "--step", "2"]) == 2


def test_every_metric_but_the_baselines_says_which_way_is_better():
    from onnx_cam.metrics import METRICS
    from onnx_cam.metrics.directions import BETTER

    undirected = {m for m in METRICS if m.endswith("_random")} | {"class_distance"}
    assert set(METRICS) - undirected == set(BETTER)
    assert set(BETTER.values()) == {"higher", "lower"}
