"""Perturbation methods against direct loops written here in torch / numpy with the same masks
and samples, and against Captum 0.9's Occlusion, Lime and KernelShap."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import small_cnn
from torch import nn

import onnx_cam
from onnx_cam.converters import export_torch
from onnx_cam.errors import MethodError
from onnx_cam.methods import (
    LIME,
    RISE,
    InputBatch,
    KernelSHAP,
    LayerBatch,
    Occlusion,
    ReciproCAM,
    get_method,
)
from onnx_cam.methods.masking import baseline_like
from onnx_cam.methods.segments import slic
from onnx_cam.model import Model
from onnx_cam.probes import Probe
from onnx_cam.runtime import RuntimeOptions

SHAPES = {1: (2, 2, 30), 2: (2, 2, 12, 10), 3: (2, 2, 6, 8, 5)}
MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}
TARGETS = [0, 2]
WINDOWS = {1: ((5,), (3,)), 2: ((4, 3), (3, 2)), 3: ((3, 4, 2), (2, 3, 2))}
SEGMENT_WINDOWS = {1: (6,), 2: (5, 4), 3: (3, 4, 5)}


def probe_for(model: nn.Module, x: torch.Tensor, batch_size: int = 7) -> Probe:
    return Probe(Model(export_torch(model, x)), RuntimeOptions(), tuple(x.shape[2:]),
                 batch_size)


def one_hot(targets, classes=3) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[targets]


@pytest.fixture(scope="module", params=[1, 2, 3], ids=["1d", "2d", "3d"])
def setup(request):
    """(dims, torch logits model, x, InputBatch): the ONNX model ends in a softmax, the
    explained score is the logit before it."""
    dims = request.param
    torch.manual_seed(5)
    model = small_cnn(dims, nn.Softmax(dim=1), classes=3)
    x = torch.randn(*SHAPES[dims])
    batch = InputBatch(x.numpy(), one_hot(TARGETS), probe_for(model, x))
    return dims, model[:-1], x, batch


def scores(logits_model: nn.Module, inputs: torch.Tensor, target: int) -> torch.Tensor:
    with torch.no_grad():
        return logits_model(inputs.float())[:, target]


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Move on while the previous window has not reached the end."""
    starts = [0]
    while starts[-1] + window < size:
        starts.append(starts[-1] + stride)
    return starts


def test_occlusion_matches_a_direct_loop(setup):
    dims, logits_model, x, batch = setup
    window, strides = WINDOWS[dims]
    baseline = np.random.default_rng(1).normal(size=x.shape[1:]).astype(np.float32)
    method = Occlusion(window=window, strides=strides, baseline=baseline)
    ours = method.attribute(batch)
    spatial = x.shape[2:]
    expected = torch.zeros((len(x), 1, *spatial))
    count = torch.zeros(spatial)
    windows = list(itertools.product(*[window_starts(s, w, st)
                                       for s, w, st in zip(spatial, window, strides)]))
    for corner in windows:
        mask = torch.zeros(spatial, dtype=torch.bool)
        mask[tuple(slice(a, a + w) for a, w in zip(corner, window))] = True
        count += mask
        occluded = torch.where(mask, torch.from_numpy(baseline), x)
        for i, t in enumerate(TARGETS):
            drop = scores(logits_model, x[i:i + 1], t) - scores(logits_model, occluded[i:i + 1], t)
            expected[i, 0] += drop * mask
    expected /= count
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-4, atol=1e-5)
    assert method.passes(batch) == len(x) * (len(windows) + 1)


@pytest.mark.parametrize("dims", [1, 2])
def test_occlusion_matches_captum(dims):
    captum_attr = pytest.importorskip("captum.attr", reason="Captum 0.9 is the reference")
    torch.manual_seed(6)
    model = small_cnn(dims, classes=3)
    x = torch.randn(*SHAPES[dims])
    window, strides = WINDOWS[dims]
    baseline = 0.3 if dims == 1 else torch.randn(x.shape)  # a number, an array per row
    ours = Occlusion(window=window, strides=strides,
                     baseline=np.asarray(baseline)).attribute(
        InputBatch(x.numpy(), one_hot(TARGETS), probe_for(model, x)))
    theirs = captum_attr.Occlusion(model).attribute(
        x, sliding_window_shapes=(x.shape[1], *window), strides=(1, *strides),
        baselines=baseline, target=TARGETS)
    np.testing.assert_allclose(np.broadcast_to(ours, theirs.shape), theirs.numpy(), rtol=1e-4,
                               atol=1e-5)


def test_occlusion_through_explain_matches_captum():
    """The same method as a name in explain(): its attribution is Captum's, its map the
    absolute value min-max scaled per row, beside a CAM of the same call."""
    captum_attr = pytest.importorskip("captum.attr", reason="Captum 0.9 is the reference")
    torch.manual_seed(7)
    model = small_cnn(2, classes=3)
    x = torch.randn(*SHAPES[2])
    window, strides = WINDOWS[2]
    res = onnx_cam.Explainer(export_torch(model, x)).explain(
        x.numpy(), targets=TARGETS, methods=["gradcam", Occlusion(window=window,
                                                                  strides=strides)])
    theirs = captum_attr.Occlusion(model).attribute(
        x, sliding_window_shapes=(x.shape[1], *window), strides=(1, *strides), baselines=0.0,
        target=TARGETS).numpy()
    np.testing.assert_allclose(np.broadcast_to(res.attribution("occlusion"), theirs.shape),
                               theirs, rtol=1e-4, atol=1e-5)
    magnitude = np.abs(theirs[:, 0]).reshape(len(x), -1)
    low, high = magnitude.min(1, keepdims=True), magnitude.max(1, keepdims=True)
    np.testing.assert_allclose(res.cam("occlusion").reshape(len(x), -1),
                               (magnitude - low) / (high - low), atol=1e-5)
    assert res.cam("gradcam").shape == res.cam("occlusion").shape


def test_rise_matches_a_direct_loop(setup):
    dims, logits_model, x, batch = setup
    method = RISE(n_masks=20, cells=3, p=0.4, seed=1)
    ours = method.attribute(batch)
    spatial = x.shape[2:]
    grids, shifts = method.grids(spatial)
    cell = [math.ceil(s / 3) for s in spatial]
    expected = torch.zeros((len(x), *spatial), dtype=torch.float64)
    for grid, shift in zip(grids, shifts):
        up = F.interpolate(torch.from_numpy(grid)[None, None], size=[4 * c for c in cell],
                           mode=MODES[dims], align_corners=False)[0, 0]
        mask = up[tuple(slice(a, a + s) for a, s in zip(shift, spatial))]
        for i, t in enumerate(TARGETS):
            expected[i] += scores(logits_model, x[i:i + 1] * mask, t).double() * mask
    expected /= 20 * 0.4
    np.testing.assert_allclose(ours[:, 0], expected.numpy(), rtol=1e-4, atol=1e-5)
    assert set(np.unique(grids)) <= {0.0, 1.0} and method.passes(batch) == 40


def block_labels(spatial, window) -> np.ndarray:
    labels = np.empty(spatial, np.int64)
    blocks = [math.ceil(s / w) for s, w in zip(spatial, window)]
    for position in itertools.product(*map(range, spatial)):
        block = [p // w for p, w in zip(position, window)]
        labels[position] = np.ravel_multi_index(block, blocks)
    return labels


def weighted_fit(samples, targets, weights, alpha):
    """Closed-form weighted ridge, intercept unpenalised, in float64 torch."""
    z = torch.cat([torch.as_tensor(samples, dtype=torch.float64),
                   torch.ones(len(samples), 1, dtype=torch.float64)], dim=1)
    w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(targets, dtype=torch.float64).reshape(-1)
    penalty = alpha * torch.eye(z.shape[1], dtype=torch.float64)
    penalty[-1, -1] = 0
    solution = torch.linalg.solve(z.T @ (w[:, None] * z) + penalty, z.T @ (w * y))
    return solution[:-1], solution[-1]


def lime_weight(sample: torch.Tensor, width: float) -> float:
    ones = torch.ones_like(sample)
    distance = 1.0 if sample.sum() == 0 else 1 - F.cosine_similarity(sample, ones, dim=0)
    return math.exp(-float(distance) ** 2 / (2 * width ** 2))


@pytest.mark.parametrize("kind", ["lime", "kernelshap"])
def test_surrogates_match_a_direct_loop(setup, kind):
    dims, logits_model, x, batch = setup
    window = SEGMENT_WINDOWS[dims]
    baseline = 0.25
    method = (LIME(n_samples=40, window=window, baseline=baseline, seed=2) if kind == "lime"
              else KernelSHAP(n_samples=60, window=window, baseline=baseline, seed=2))
    ours = method.attribute(batch)
    labels = block_labels(x.shape[2:], window)
    samples = torch.from_numpy(method.samples(labels.max() + 1))
    if kind == "lime":
        weights = [lime_weight(sample, 0.25) for sample in samples]
    else:
        weights = [1e6 if sample.sum() in (0, len(sample)) else 1.0 for sample in samples]
    keep = samples[:, torch.from_numpy(labels)].bool()[:, None]
    for i, t in enumerate(TARGETS):
        outputs = scores(logits_model, torch.where(keep, x[i], baseline), t)
        coefficients, _ = weighted_fit(samples, outputs, weights, 1.0 if kind == "lime" else 0.0)
        np.testing.assert_allclose(ours[i, 0], coefficients[labels].numpy(), rtol=2e-3,
                                   atol=1e-4)


def test_kernelshap_samples_follow_the_shapley_kernel():
    count, draws = 6, 30000
    samples = KernelSHAP(n_samples=draws, seed=3).samples(count)
    assert samples[0].all() and not samples[1].any()
    kept = samples[2:].sum(axis=1)
    sizes = np.arange(1, count)
    chance = (count - 1) / (sizes * (count - sizes))
    np.testing.assert_allclose(np.bincount(kept.astype(int), minlength=count)[1:] / len(kept),
                               chance / chance.sum(), atol=0.01)
    for k in sizes:  # the kept segments of a size are uniform over the segments
        np.testing.assert_allclose(samples[2:][kept == k].mean(axis=0), k / count, atol=0.03)


def captum_linear_model(alpha: float):
    """A Captum LinearModel trained by the closed-form weighted ridge above."""
    from captum._utils.models.linear_model import LinearModel

    def train(model, dataloader, construct_kwargs, **kwargs):
        z, y, w = (torch.cat(parts) for parts in zip(*dataloader))
        coefficients, intercept = weighted_fit(z, y, w, alpha)
        model._construct_model_params(weight_values=coefficients[None].float(),
                                      bias_value=intercept[None].float())
        return {}
    return LinearModel(train_fn=train)


def fixed_samples(samples: np.ndarray):
    def perturb(original_inp, **kwargs):
        for sample in samples:
            yield torch.from_numpy(sample).long()[None]
    return perturb


@pytest.mark.filterwarnings("ignore:You are providing multiple inputs")
@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("kind", ["lime", "kernelshap"])
def test_surrogates_match_captum(dims, kind):
    captum_attr = pytest.importorskip("captum.attr", reason="Captum 0.9 is the reference")
    torch.manual_seed(7)
    model = small_cnn(dims, classes=3)
    x = torch.randn(*SHAPES[dims])
    window = SEGMENT_WINDOWS[dims]
    method = (LIME(n_samples=40, window=window, baseline=0.1, seed=4) if kind == "lime"
              else KernelSHAP(n_samples=60, window=window, baseline=0.1, seed=4))
    ours = method.attribute(InputBatch(x.numpy(), one_hot(TARGETS), probe_for(model, x)))
    labels = block_labels(x.shape[2:], window)
    samples = method.samples(labels.max() + 1)
    feature_mask = torch.from_numpy(labels)[None, None].expand(1, *x.shape[1:])
    if kind == "lime":
        def similarity(original, perturbed, interpretable, **kwargs):
            return lime_weight(interpretable[0].double(), 0.25)
        explainer = captum_attr.Lime(model, interpretable_model=captum_linear_model(1.0),
                                     similarity_func=similarity,
                                     perturb_func=fixed_samples(samples))
    else:  # Captum's own Shapley weights; its samples replaced by ours (same distribution)
        explainer = captum_attr.KernelShap(model)
        explainer.interpretable_model = captum_linear_model(0.0)
        explainer.perturb_func = fixed_samples(samples)
    theirs = explainer.attribute(x, target=TARGETS, baselines=0.1, feature_mask=feature_mask,
                                 n_samples=len(samples), perturbations_per_eval=16)
    np.testing.assert_allclose(np.broadcast_to(ours, theirs.shape), theirs.numpy(), rtol=2e-3,
                               atol=1e-4)


class Planted(nn.Module):
    """A 1D model that only sees samples 100-199 of its 300; on positive inputs, class 0
    grows and class 1 shrinks with them."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 5, padding=2)
        self.conv.weight.data.abs_()
        self.fc = nn.Linear(4, 2)
        self.fc.weight.data = torch.tensor([[1.0] * 4, [-1.0] * 4])
        window = torch.zeros(300)
        window[100:200] = 1
        self.register_buffer("window", window)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x * self.window)).mean(2))


@pytest.mark.parametrize("method", [
    Occlusion(window=10), LIME(n_samples=200, window=20), KernelSHAP(n_samples=200, window=20),
    RISE(n_masks=300, cells=15)], ids=["occlusion", "lime", "kernelshap", "rise"])
def test_attribution_lands_where_the_model_looks(method):
    torch.manual_seed(8)
    model = Planted().eval()
    x = torch.rand(2, 1, 300) + 0.5
    attr = method.attribute(InputBatch(x.numpy(), one_hot([0, 1], 2), probe_for(model, x, 64)))
    if isinstance(method, RISE):  # a noisy map, the mean score where the model does not look
        outside = np.concatenate([attr[:, 0, :80], attr[:, 0, 220:]], axis=1)
        shift = np.abs(attr[:, 0, 100:200].mean(axis=1) - outside.mean(axis=1))
        assert (shift > 3 * outside.std(axis=1)).all()
    else:
        mass = np.abs(attr[:, 0])
        assert (mass[:, 100:200].sum(axis=1) / mass.sum(axis=1) > 0.9).all()


def test_reciprocam_matches_a_direct_loop(setup):
    dims, logits_model, x, _ = setup
    head_from = 4  # the head of small_cnn above its second ReLU: pool, flatten, linear
    with torch.no_grad():
        acts = logits_model[:head_from](x)
    spatial = acts.shape[2:]
    exp = onnx_cam.Explainer(export_torch(nn.Sequential(*logits_model, nn.Softmax(1)), x))
    for gaussian in (False, True):
        res = exp.explain(x.numpy(), targets=TARGETS, layers="3", batch_size=5,
                          methods=[ReciproCAM(gaussian=gaussian)])
        expected = torch.zeros((len(x), *spatial))
        for position in itertools.product(*map(range, spatial)):
            mask = torch.zeros(spatial)
            for offset in itertools.product((-1, 0, 1), repeat=dims):
                if not gaussian and any(offset):
                    continue
                near = tuple(p + o for p, o in zip(position, offset))
                if all(0 <= q < s for q, s in zip(near, spatial)):
                    mask[near] = 0.5 ** sum(1 + abs(o) for o in offset) if gaussian else 1.0
            for i, t in enumerate(TARGETS):
                expected[(i, *position)] = scores(logits_model[head_from:],
                                                  acts[i:i + 1] * mask, t)[0]
        np.testing.assert_allclose(res.raw("reciprocam"), expected.numpy(), rtol=1e-4,
                                   atol=1e-5)
    layer_batch = LayerBatch(acts.numpy(), None, x.numpy(), one_hot(TARGETS))
    assert ReciproCAM().passes(layer_batch) == acts[0, 0].numel() * len(x)


def test_slic_segments_follow_colour_edges():
    image = np.random.default_rng(0).normal(0, 0.3, (3, 48, 48)).astype(np.float32)
    inside = np.zeros((48, 48), bool)
    inside[10:30, 15:40] = True
    image[:, inside] += 3
    labels = slic(image, n_segments=16, compactness=3.0)
    assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))
    sizes = np.bincount(labels.ravel())
    assert 8 <= len(sizes) <= 32 and sizes.min() >= 48 * 48 / 16 / 4  # small pieces joined
    for label in range(len(sizes)):  # no segment straddles the edge
        assert len(np.unique(inside[labels == label])) == 1
    method = LIME(n_samples=30, segments="slic", n_segments=16)
    assert np.array_equal(method.segment(image), labels)


def test_configuration_mistakes_are_refused():
    x = np.zeros((1, 2, 20), np.float32)
    batch = InputBatch(x, one_hot([0]), None)
    with pytest.raises(MethodError, match="exceeds"):
        Occlusion(window=30).windows((20,))
    with pytest.raises(MethodError, match="strides <= window"):
        Occlusion(window=4, strides=5).windows((20,))
    with pytest.raises(MethodError, match="one per spatial axis"):
        Occlusion(window=(4, 4)).windows((20,))
    with pytest.raises(MethodError, match="baseline"):
        Occlusion(baseline=np.zeros(3)).attribute(batch)
    with pytest.raises(MethodError, match="0 < p <= 1"):
        RISE(p=0).grids((20,))
    with pytest.raises(MethodError, match="for images"):
        LIME(segments="slic").segment(x[0])
    with pytest.raises(MethodError, match="'windows' or 'slic'"):
        LIME(segments="grid").segment(x[0])
    assert get_method("kernel-shap") == KernelSHAP() and get_method("RISE").n_masks == 4000
    np.testing.assert_array_equal(baseline_like(lambda v: v + 1, x), x + 1)
    with pytest.raises(MethodError, match="baseline"):
        baseline_like(lambda v: v[..., :5], x)


def count_runs(monkeypatch) -> list[int]:
    """The number of inputs of every ONNX Runtime run a Probe makes from now on."""
    import onnx_cam.probes
    runs, real = [], onnx_cam.probes.run

    def counting(session, outputs, feeds):
        runs.append(len(next(iter(feeds.values()))))
        return real(session, outputs, feeds)
    monkeypatch.setattr(onnx_cam.probes, "run", counting)
    return runs


@pytest.mark.parametrize("method", [
    Occlusion(window=4), RISE(n_masks=9, cells=2), LIME(n_samples=11, window=5),
    KernelSHAP(n_samples=11, window=5)], ids=["occlusion", "rise", "lime", "kernelshap"])
def test_input_methods_count_their_passes_and_keep_to_the_batch_size(method, monkeypatch):
    torch.manual_seed(9)
    x = torch.randn(3, 2, 20)
    batch = InputBatch(x.numpy(), one_hot([0, 1, 2]), probe_for(small_cnn(1), x, 4))
    runs = count_runs(monkeypatch)
    method.attribute(batch)
    assert sum(runs) == method.passes(batch) and max(runs) <= 4


def test_reciprocam_counts_its_head_passes_and_keeps_to_the_batch_size(monkeypatch):
    torch.manual_seed(9)
    model, x = small_cnn(2), torch.randn(3, 2, 6, 5)
    exported = Model(export_torch(model, x))
    with torch.no_grad():
        acts = model[:4](x).numpy()
    probe = Probe(exported, RuntimeOptions(), (6, 5), 4)
    batch = LayerBatch(acts, None, x.numpy(), one_hot([0, 1, 2]),
                       exported.resolve_layer("3").tensor, probe)
    runs = count_runs(monkeypatch)
    ReciproCAM(gaussian=True).raw(batch)
    assert sum(runs) == ReciproCAM().passes(batch) and max(runs) <= 4
