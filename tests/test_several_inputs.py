"""Models with several inputs: maps over the explained input, every other input fed per item.

Three torch models: a 1D signal + a metadata vector through an MLP joined before a
non-linear head (so the gradient at every conv layer depends on the metadata), two 2D views
of different sizes, and an image + mask concatenated before the first convolution. Maps,
gradients and attributions are checked against torch autograd (Grad-CAM, Ablation-CAM and
saliency written out in torch) and Captum 0.9 with additional_forward_args; the CLI and
audit jobs against the same torch maps.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from torch import nn

import onnx_cam
from onnx_cam import InputError, OnnxCamError, UnsupportedModelError
from onnx_cam.cli import main
from onnx_cam.methods import AblationCAM, IntegratedGradients, Occlusion, Saliency

EXIT_OK, EXIT_USAGE = 0, 2


class EcgMeta(nn.Module):
    """A 12-lead-like signal through convolutions, age / sex through an MLP, joined before a
    non-linear head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(2, 4, 5, padding=2), nn.ReLU(),
                                      nn.Conv1d(4, 6, 3, padding=1), nn.ReLU())
        self.meta = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 6))
        self.head = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, ecg, age):
        pooled = self.features(ecg).mean(-1)
        return self.head(torch.cat([pooled, self.meta(age)], 1))


class TwoViews(nn.Module):
    """Two images of different sizes, each through its own convolutions."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                               nn.Conv2d(4, 5, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
                               nn.Conv2d(4, 5, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 3))

    def forward(self, front, side):
        joined = torch.cat([self.a(front).mean((2, 3)), self.b(side).amax((2, 3))], 1)
        return {"logits": self.head(joined), "embedding": joined}


class ImageMask(nn.Module):
    """An image and its mask stacked as channels before the first convolution."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(5, 6, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(6, 3)

    def forward(self, image, mask):
        return self.fc(self.features(torch.cat([image, mask], 1)).mean((2, 3)))


def _model(cls, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls().eval()


@pytest.fixture(scope="module")
def ecg():
    net = _model(EcgMeta)
    g = torch.Generator().manual_seed(1)
    x = {"ecg": torch.randn(5, 2, 40, generator=g), "age": torch.randn(5, 3, generator=g)}
    exp = onnx_cam.Explainer(net, example_input=(x["ecg"][:2], x["age"][:2]))
    return net, exp, x


@pytest.fixture(scope="module")
def views():
    net = _model(TwoViews)
    g = torch.Generator().manual_seed(2)
    x = {"front": torch.randn(3, 1, 16, 16, generator=g),
         "side": torch.randn(3, 2, 12, 12, generator=g)}
    exp = onnx_cam.Explainer(net, example_input=x, output="logits")
    return net, exp, x


@pytest.fixture(scope="module")
def image_mask():
    net = _model(ImageMask)
    g = torch.Generator().manual_seed(3)
    x = {"image": torch.randn(3, 3, 12, 12, generator=g),
         "mask": (torch.rand(3, 1, 12, 12, generator=g) > 0.5).float()}
    exp = onnx_cam.Explainer(net, example_input=x)
    return net, exp, x


def _numpy(x: dict) -> dict:
    return {k: v.numpy() for k, v in x.items()}


def _logits(net, x: dict) -> torch.Tensor:
    out = net(*x.values())
    return out["logits"] if isinstance(out, dict) else out


def _layer_grads(net, module: nn.Module, x: dict, items, targets):
    """Per row (item, target): the module's output and d logit[target] / d output."""
    acts, grads = [], []
    for item, target in zip(items, targets):
        saved = {}
        handle = module.register_forward_hook(lambda m, i, o, s=saved: s.setdefault("a", o))
        logit = _logits(net, {k: v[item:item + 1] for k, v in x.items()})[0, target]
        handle.remove()
        grads.append(torch.autograd.grad(logit, saved["a"])[0][0])
        acts.append(saved["a"][0].detach())
    return torch.stack(acts), torch.stack(grads)


def _scaled(maps: torch.Tensor, size) -> np.ndarray:
    """Maps upsampled (linear / bilinear, half-pixel centres) and min-max scaled per row."""
    mode = "linear" if len(size) == 1 else "bilinear"
    up = F.interpolate(maps[:, None], size=size, mode=mode, align_corners=False)[:, 0]
    flat = up.reshape(len(up), -1)
    low, high = flat.min(1, keepdim=True)[0], flat.max(1, keepdim=True)[0]
    return ((flat - low) / (high - low)).reshape(up.shape).numpy()


def _gradcam(net, module, x, items, targets, size) -> np.ndarray:
    acts, grads = _layer_grads(net, module, x, items, targets)
    weights = grads.mean(tuple(range(2, grads.ndim)), keepdim=True)
    return _scaled(torch.relu((weights * acts).sum(1)), size)


def _rows(res) -> tuple[list[int], list[int]]:
    return res.items.tolist(), res.targets.tolist()


def test_signal_and_metadata_gradcam_equals_torch(ecg):
    net, exp, x = ecg
    assert exp.inputs == ["ecg", "age"] and exp.model.input_name == "ecg"
    # several targets for item 1: its metadata is fed with each of its rows; batches of 2
    # rows cut across items
    res = exp.explain(_numpy(x), targets=[0, [1, 2], 2, 1, 0], layers="features.2",
                      batch_size=2)
    items, targets = _rows(res)
    assert items == [0, 1, 1, 2, 3, 4]
    want = _gradcam(net, net.features[2], x, items, targets, (40,))
    np.testing.assert_allclose(res.cam("gradcam"), want, atol=1e-4)


def test_signal_and_metadata_gradients_equal_torch(ecg):
    net, exp, x = ecg
    logits, values = exp.activations_and_gradients(_numpy(x), targets=[2, 0, 1, 1, 0],
                                                   layers="features.3")
    acts, grads = _layer_grads(net, net.features[3], x, range(5), [2, 0, 1, 1, 0])
    got_a, got_g = values["features.3"]
    np.testing.assert_allclose(logits, _logits(net, x).detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(got_a, acts.numpy(), atol=1e-5)
    scale = np.abs(grads.numpy()).max()
    np.testing.assert_allclose(got_g / scale, grads.numpy() / scale, atol=1e-4)


def test_tuple_in_graph_order_equals_dict(ecg):
    _, exp, x = ecg
    a = exp.explain(_numpy(x), targets=1)
    b = exp.explain((x["ecg"].numpy(), x["age"].numpy()), targets=1)
    np.testing.assert_array_equal(a.cam(), b.cam())


def test_ablationcam_runs_the_head_with_the_items_metadata(ecg):
    """Ablation-CAM runs only the head above the layer, which also reads the metadata."""
    net, exp, x = ecg
    res = exp.explain(_numpy(x), targets=[1, 0, 2, 2, 1], layers="features.3",
                      methods=[AblationCAM()], batch_size=3)
    acts, _ = _layer_grads(net, net.features[3], x, range(5), [1, 0, 2, 2, 1])
    want = []
    for item, target in enumerate([1, 0, 2, 2, 1]):
        a = acts[item]

        def score(values, item=item, target=target):
            pooled = values.mean(-1)
            meta = net.meta(x["age"][item:item + 1].expand(len(values), -1))
            return net.head(torch.cat([pooled, meta], 1))[:, target]

        original = score(a[None])[0]
        ablated = a[None].repeat(len(a), 1, 1)
        ablated[torch.arange(len(a)), torch.arange(len(a))] = 0.0  # minimum 0 after ReLU
        weights = (original - score(ablated)) / original
        want.append(torch.relu((weights[:, None] * a).sum(0)).detach())
    np.testing.assert_allclose(res.cam("ablationcam"), _scaled(torch.stack(want), (40,)),
                               atol=1e-4)


def test_input_attributions_attribute_the_explained_input(ecg):
    captum_attr = pytest.importorskip("captum.attr", reason="Captum is the reference: pip "
                                      "install --no-deps captum==0.9.0")
    net, exp, x = ecg
    targets = [0, 2, 1, 1, 2]
    res = exp.explain(_numpy(x), targets=targets, batch_size=2, methods=[
        Saliency(absolute=False), IntegratedGradients(n_steps=16),
        Occlusion(window=8, strides=4)])
    ecg_in = x["ecg"].clone().requires_grad_()
    picked = _logits(net, {"ecg": ecg_in, "age": x["age"]})[torch.arange(5), targets]
    saliency = torch.autograd.grad(picked.sum(), ecg_in)[0].numpy()
    np.testing.assert_allclose(res.attribution("saliency"), saliency, atol=1e-5)
    ig = captum_attr.IntegratedGradients(net).attribute(
        x["ecg"], target=targets, additional_forward_args=(x["age"],), n_steps=16)
    np.testing.assert_allclose(res.attribution("integrated_gradients"), ig.numpy(), atol=1e-4)
    occlusion = captum_attr.Occlusion(net).attribute(
        x["ecg"], sliding_window_shapes=(2, 8), strides=(2, 4), target=targets,
        additional_forward_args=(x["age"],))
    np.testing.assert_allclose(res.attribution("occlusion")[:, 0], occlusion[:, 0].numpy(),
                               atol=1e-4)


def test_two_views_maps_cover_the_view_a_layer_comes_from(views):
    net, exp, x = views
    targets = [2, 0, 1]
    front = exp.explain(_numpy(x), targets=targets, layers="a.2")
    side = exp.explain(_numpy(x), targets=targets, layers="b.2")
    assert front.cam().shape == (3, 16, 16) and side.cam().shape == (3, 12, 12)
    np.testing.assert_allclose(front.cam(), _gradcam(net, net.a[2], x, range(3), targets,
                                                     (16, 16)), atol=1e-4)
    np.testing.assert_allclose(side.cam(), _gradcam(net, net.b[2], x, range(3), targets,
                                                    (12, 12)), atol=1e-4)
    # input= picks the deepest layer computed from that view
    deepest = exp.explain(_numpy(x), targets=targets, input="side")
    assert deepest.layers == [exp.for_input("side").layers[0]]
    assert set(exp.for_input("side").layers) >= {"b", "b.0", "b.2"}


def test_two_views_refuse_what_is_ambiguous(views):
    _, exp, x = views
    with pytest.raises(InputError, match=r"several spatial inputs \['front', 'side'\].*input="):
        exp.explain(_numpy(x))
    with pytest.raises(InputError, match="different inputs"):
        exp.explain(_numpy(x), layers=["a.2", "b.2"])
    with pytest.raises(InputError, match=r"'b.2' is computed from the input\(s\) \['side'\], "
                                         r"not from 'front'"):
        exp.explain(_numpy(x), layers="b.2", input="front")


def test_dict_outputs_by_name(views):
    net, _, x = views
    with pytest.raises(UnsupportedModelError, match=r"no output 'scores'.*'logits', "
                                                    r"'embedding'"):
        onnx_cam.Explainer(net, example_input=x, output="scores")
    embedding = onnx_cam.Explainer(net, example_input=x, output="embedding")
    assert embedding.num_classes == 10


def test_torch_export_names_inputs_after_forward(views):
    net, _, x = views
    reordered = onnx_cam.Explainer(net, example_input={"side": x["side"], "front": x["front"]},
                                   output="logits")
    assert reordered.inputs == ["front", "side"]
    with pytest.raises(onnx_cam.ModelLoadError, match=r"keys \['front', 'view'\] must be the "
                                                      r"first parameters"):
        onnx_cam.Explainer(net, example_input={"front": x["front"], "view": x["side"]})


def test_image_and_mask(image_mask):
    net, exp, x = image_mask
    with pytest.raises(InputError, match=r"several spatial inputs \['image', 'mask'\]"):
        exp.explain(_numpy(x))
    with pytest.raises(InputError, match=r"'features.2' is computed from the inputs "
                                         r"\['image', 'mask'\].*input="):
        exp.explain(_numpy(x), layers="features.2")
    res = exp.explain(_numpy(x), targets=[1, 2, 0], layers="features.2", input="image")
    np.testing.assert_allclose(res.cam(), _gradcam(net, net.features[2], x, range(3),
                                                   [1, 2, 0], (12, 12)), atol=1e-4)
    # an Explainer bound to the image: "auto" is its deepest layer
    bound = onnx_cam.Explainer(net, example_input=x, input="image")
    auto = bound.explain(_numpy(x), targets=[1, 2, 0])
    np.testing.assert_allclose(auto.cam(), _gradcam(net, net.features[3], x, range(3),
                                                    [1, 2, 0], (12, 12)), atol=1e-4)


@pytest.mark.parametrize("bad, message", [
    ("array", r"takes 2 inputs \['ecg', 'age'\]: pass x as a dict"),
    ({"ecg": 0}, r"lacks the input\(s\) \['age'\]"),
    ({"ecg": 0, "age": 0, "sex": 0}, r"names \['sex'\], which the model does not take"),
    ({"ecg": 0, "age": slice(0, 3)}, r"holds 5 items but \{'age': 3\}"),
    ({"ecg": 0, "age": (slice(None), slice(0, 2))}, r"'age' takes size 3 along axis 1"),
    ("tuple3", r"tuple of 3 arrays; the model takes 2 inputs"),
])
def test_bad_inputs_name_the_problem(ecg, bad, message):
    _, exp, x = ecg
    given = _numpy(x)
    if bad == "array":
        value = given["ecg"]
    elif bad == "tuple3":
        value = (given["ecg"], given["age"], given["age"])
    else:
        value = {k: given[k if k in given else "age"] if v == 0 else given[k][v]
                 for k, v in bad.items()}
    with pytest.raises(InputError, match=message):
        exp.explain(value)


def test_side_input_nan_is_refused(ecg):
    _, exp, x = ecg
    given = _numpy(x)
    given["age"] = given["age"].copy()
    given["age"][3, 1] = np.nan
    with pytest.raises(InputError, match=r"'age' holds NaN or Inf at items \[3\]"):
        exp.explain(given)


def test_deletion_perturbs_the_explained_input_only(views):
    """The deletion curve's scores written out in torch: the top-ranked positions of the side
    view set to 0, the front view fed as given, the target's softmax probability."""
    net, exp, x = views
    res = exp.explain(_numpy(x), targets=[0, [1, 2], 2], layers="b.2")
    fractions, scores = onnx_cam.metrics.deletion_curves(exp, _numpy(x), res, baseline=0.0,
                                                         step=0.25, batch_size=4)
    positions = 12 * 12
    for row, (item, target) in enumerate(zip(*_rows(res))):
        order = np.argsort(-res.cam()[row].ravel(), kind="stable")
        for k, fraction in enumerate(fractions):
            side = x["side"][item].clone().reshape(2, -1)
            side[:, order[:int(round(fraction * positions))]] = 0.0
            logits = _logits(net, {"front": x["front"][item:item + 1],
                                   "side": side.reshape(1, 2, 12, 12)})
            want = torch.softmax(logits, 1)[0, target].item()
            assert abs(scores[row, k] - want) < 1e-5
    values = onnx_cam.metrics.evaluate(exp, _numpy(x), res, ["deletion", "avg_drop"],
                                       baseline=0.0, step=0.25)
    np.testing.assert_allclose(values["deletion"], np.trapezoid(scores, fractions, axis=1),
                               rtol=1e-6)


def test_what_is_refused(ecg):
    _, exp, x = ecg
    with pytest.raises(OnnxCamError, match="sess and aug_smooth"):
        exp.explain(_numpy(x), methods="sess")
    with pytest.raises(OnnxCamError, match="models with one input"):
        exp.factorize(_numpy(x), "features.3")
    res = exp.explain(_numpy(x))
    with pytest.raises(OnnxCamError, match="Sanity checks .* models with one input"):
        onnx_cam.metrics.evaluate(exp, _numpy(x), res, "random_label_spearman")


def test_one_input_model_takes_a_dict_too():
    net = _model(ImageMask).features
    x = torch.randn(2, 4, 12, 12)
    exp = onnx_cam.Explainer(nn.Sequential(net, nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                             example_input=x)
    np.testing.assert_array_equal(exp.explain({"input": x.numpy()}).cam(),
                                  exp.explain(x.numpy()).cam())
    with pytest.raises(InputError, match=r"names \['image'\]"):
        exp.explain({"image": x.numpy()})


def test_cli_explain_reads_one_array_per_input(ecg, tmp_path, capsys):
    net, exp, x = ecg
    model = tmp_path / "ecg.onnx"
    exp.save_model(model)
    np.savez(tmp_path / "a.npz", ecg=x["ecg"][:3].numpy(), age=x["age"][:3].numpy())
    np.savez(tmp_path / "b.npz", ecg=x["ecg"][3:].numpy(), age=x["age"][3:].numpy())
    out = tmp_path / "out"
    assert main(["explain", str(model), str(tmp_path / "a.npz"), str(tmp_path / "b.npz"),
                 "--out", str(out), "--layer", "features.2", "--target", "1",
                 "--quiet"]) == EXIT_OK
    res = onnx_cam.Explanation.load(out / "cams.npz")
    np.testing.assert_allclose(res.cam(), _gradcam(net, net.features[2], x, range(5),
                                                   [1] * 5, (40,)), atol=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert [row["file"] for row in summary["rows"]] == [str(tmp_path / "a.npz")] * 3 + [
        str(tmp_path / "b.npz")] * 2
    np.savez(tmp_path / "bad.npz", ecg=x["ecg"].numpy(), sex=x["age"].numpy())
    capsys.readouterr()
    assert main(["explain", str(model), str(tmp_path / "bad.npz"), "--out",
                 str(tmp_path / "bad")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "holds the arrays ['ecg', 'sex']; the model's inputs are ['ecg', 'age']" in err


def test_cli_layers_lists_each_inputs_layers(views, tmp_path, capsys):
    _, exp, _ = views
    model = tmp_path / "views.onnx"
    exp.save_model(model)
    capsys.readouterr()
    assert main(["layers", str(model), "--input", "side", "--json"]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert info["input"]["name"] == "side" and info["other_inputs"] == {"front": [None, 1, 16, 16]}
    assert {"b", "b.2"} <= {layer["name"] for layer in info["layers"]}
    assert not any(layer["name"].startswith("a") for layer in info["layers"])


class TextMeta(nn.Module):
    """Token ids through an embedding and a convolution, a metadata vector beside them."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.conv = nn.Conv1d(6, 5, 3, padding=1)
        self.meta = nn.Linear(2, 5)
        self.head = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 3))

    def forward(self, ids, meta):
        pooled = torch.relu(self.conv(self.emb(ids).transpose(1, 2))).mean(-1)
        return self.head(torch.cat([pooled, self.meta(meta)], 1))


def test_token_ids_and_metadata_saliency_equals_torch():
    net = _model(TextMeta)
    g = torch.Generator().manual_seed(4)
    ids, meta = torch.randint(1, 20, (3, 12), generator=g), torch.randn(3, 2, generator=g)
    exp = onnx_cam.Explainer(net, example_input=(ids, meta))
    assert exp.model.tokens and list(exp.model.side_inputs) == ["meta"]
    res = exp.explain({"ids": ids.numpy(), "meta": meta.numpy()}, targets=[0, 1, 2],
                      methods=[Saliency(absolute=False)], batch_size=2)
    embedded = net.emb(ids).detach().requires_grad_()
    pooled = torch.relu(net.conv(embedded.transpose(1, 2))).mean(-1)
    logits = net.head(torch.cat([pooled, net.meta(meta)], 1))
    grad = torch.autograd.grad(logits[torch.arange(3), [0, 1, 2]].sum(), embedded)[0]
    np.testing.assert_allclose(res.attribution("saliency"), grad.sum(-1).numpy(), atol=1e-5)


@pytest.mark.parametrize("kind", ["npz", "zarr"])
def test_audit_reads_one_array_per_input(views, tmp_path, kind):
    net, exp, x = views
    model = tmp_path / "views.onnx"
    exp.save_model(model)
    if kind == "npz":
        dataset = tmp_path / "views.npz"
        np.savez(dataset, **_numpy(x))
    else:
        dataset = tmp_path / "views.zarr"
        group = zarr.open_group(dataset, mode="w")
        for name, values in _numpy(x).items():
            group.create_array(name, data=values, chunks=(2, *values.shape[1:]))
    store = tmp_path / "audit.zarr"
    assert main(["audit", str(model), str(dataset), "--store", str(store), "--input", "side",
                 "--layer", "b.2", "--target", "1", "--chunk-items", "2", "--cam-dtype",
                 "float32", "--metric", "avg_drop", "--quiet"]) == EXIT_OK
    audit = onnx_cam.audit.AuditStore(store)
    np.testing.assert_allclose(audit.cams("gradcam", "b.2")[:],
                               _gradcam(net, net.b[2], x, range(3), [1] * 3, (12, 12)),
                               atol=1e-4)
    # avg_drop written out: the target's probability with the side view times its map
    maps = torch.from_numpy(audit.cams("gradcam", "b.2")[:])
    masked = {"front": x["front"], "side": x["side"] * maps[:, None]}
    original, kept = (torch.softmax(_logits(net, v), 1)[:, 1] for v in (x, masked))
    drop = (torch.relu(original - kept) / original).detach().numpy()
    np.testing.assert_allclose(audit.group["metrics/avg_drop/gradcam/b.2"][:], drop,
                               atol=1e-5)
    with pytest.raises(InputError, match=r"holds the arrays \['front'\]; the model's inputs "
                                         r"are \['front', 'side'\]"):
        only = tmp_path / "front.npz"
        np.savez(only, front=x["front"].numpy())
        onnx_cam.audit.run(str(model), str(only), str(tmp_path / "other.zarr"),
                           input="side", progress=False)
    uneven = tmp_path / "uneven.npz"
    np.savez(uneven, front=x["front"].numpy(), side=x["side"][:2].numpy())
    with pytest.raises(InputError, match=r"different item counts \{'front': 3, 'side': 2\}"):
        onnx_cam.audit.run(str(model), str(uneven), str(tmp_path / "other.zarr"),
                           input="side", progress=False)
