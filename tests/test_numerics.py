"""NaN / Inf and all-zero gradients: reported per row in Explanation.flags, never turned into
zeros silently; a dead or saturated layer gives all-zero maps and a warning, never NaN."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import onnx_cam
from onnx_cam import NumericsWarning, RowFlag, ZeroGradientWarning, describe_flags
from onnx_cam.methods import METHODS

# the CAMs whose maps come from the layer's gradient (input attributions have their own flags)
GRADIENT_METHODS = sorted({c.name for c in METHODS.values()
                           if c.uses_gradients and c.level == "layer"})


class Net(nn.Module):
    """Conv (positive weights) -> ReLU -> mean -> Linear. An all-negative item leaves every
    ReLU off: the gradient at `conv` is zero. With divide=True the logits are divided by the
    pooled features' sum, 0 for such an item: its scores and gradients are not finite."""

    def __init__(self, divide: bool = False, scale: float = 1.0):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 3)
        self.divide, self.scale = divide, scale
        with torch.no_grad():
            self.conv.weight.abs_()
            self.conv.bias.zero_()

    def forward(self, x):
        a = self.relu(self.conv(x))
        f = a.mean(2)
        z = self.fc(f) * self.scale
        return z / f.sum(1, keepdim=True) if self.divide else z


def net(**kwargs) -> Net:
    torch.manual_seed(0)
    return Net(**kwargs).eval()


def explainer(model: Net) -> onnx_cam.Explainer:
    return onnx_cam.Explainer(model, example_input=torch.randn(2, 2, 16))


def torch_gradcam(model: Net, x: np.ndarray, layer: str) -> np.ndarray:
    """Raw Grad-CAM of each item's predicted class by autograd: the independent reference."""
    kept = {}
    module = getattr(model, layer)
    handle = module.register_forward_hook(lambda m, i, out: kept.update(a=out))
    xt = torch.from_numpy(x)
    logits = model(xt)
    handle.remove()
    picked = logits[torch.arange(len(x)), logits.argmax(1)].sum()
    (grad,) = torch.autograd.grad(picked, kept["a"])
    weights = grad.mean(2, keepdim=True)
    return torch.relu((weights * kept["a"]).sum(1)).detach().numpy()


def items(rng, *kinds: str) -> np.ndarray:
    """One (2, 16) item per kind: normal, dead (all negative), huge (overflows), nan."""
    x = rng.standard_normal((len(kinds), 2, 16)).astype(np.float32) + 1.0
    for i, kind in enumerate(kinds):
        if kind == "dead":
            x[i] = -np.abs(x[i]) - 0.1
        elif kind == "huge":
            x[i] = 3e38
        elif kind == "nan":
            x[i, 1, 5] = np.nan
    return x


def test_overflow_in_the_model_is_flagged_and_its_maps_are_nan(rng):
    model = net()
    x = items(rng, "normal", "huge", "normal")
    with pytest.warns(NumericsWarning, match=r"Rows \[1\] hold NaN or Inf"):
        res = explainer(model).explain(x, layers=["conv", "relu"],
                                       methods=["gradcam", "hirescam"])
    assert res.flags[1] & RowFlag.ACTIVATION_NONFINITE
    assert res.flags[1] & RowFlag.SCORE_NONFINITE
    assert res.flags[[0, 2]].tolist() == [0, 0]
    for key in res.cams:
        assert np.isnan(res.cams[key][1]).all() and np.isnan(res.ranges[key][1]).all()
        assert np.isnan(res.raws[key][1]).all()
    clean = x[[0, 2]]
    np.testing.assert_allclose(res.raw("gradcam", "conv")[[0, 2]],
                               torch_gradcam(model, clean, "conv"), rtol=1e-4, atol=1e-6)


def test_nan_input_items_raise_or_are_flagged(rng):
    model = net()
    x = items(rng, "normal", "nan", "normal")
    exp = explainer(model)
    with pytest.raises(onnx_cam.InputError, match=r"Items \[1\].*nonfinite='flag'"):
        exp.explain(x)
    with pytest.warns(NumericsWarning):
        res = exp.explain(x, nonfinite="flag", methods=["gradcam", "eigencam"])
    assert res.flags[1] & RowFlag.INPUT_NONFINITE and res.flags[[0, 2]].tolist() == [0, 0]
    for key in res.cams:  # every method's map of the item, gradient-free ones too
        assert np.isnan(res.cams[key][1]).all()
    np.testing.assert_allclose(res.raw("gradcam")[[0, 2]],
                               torch_gradcam(model, x[[0, 2]], "relu"), rtol=1e-4, atol=1e-6)
    with pytest.raises(onnx_cam.InputError, match="'raise' or 'flag'"):
        exp.explain(x, nonfinite="zero")


def test_dead_layer_gives_all_zero_maps_and_a_warning(rng):
    model = net()
    x = items(rng, "normal", "dead")
    with torch.no_grad():  # the reference: every ReLU of item 1 is off
        assert (model.conv(torch.from_numpy(x))[1] < 0).all()
    with pytest.warns(ZeroGradientWarning, match=r"\['conv'\] for rows \[1\]"):
        res = explainer(model).explain(x, layers="conv", methods=GRADIENT_METHODS)
    assert res.flags[1] & RowFlag.ZERO_GRADIENT and not res.flags[0] & RowFlag.ZERO_GRADIENT
    for method in GRADIENT_METHODS:
        for values in (res.cam(method), res.raw(method), res.score_range(method)):
            assert np.isfinite(values).all(), method
            assert (values[1] == 0).all(), method
    assert res.cam("gradcam")[0].max() == 1.0  # the live item is unaffected


def test_saturated_probabilities_give_zero_gradients_not_nan(rng):
    """score='probs' on an item the model is certain of: softmax' is exactly 0 in float32."""
    model = net(scale=1e4)
    x = items(rng, "normal", "normal")
    with pytest.warns(ZeroGradientWarning, match="saturated"):
        res = explainer(model).explain(x, score="probs", methods=["gradcam", "gradcam++",
                                                                   "xgradcam"])
    assert (res.flags & RowFlag.ZERO_GRADIENT).all()
    for key in res.cams:
        assert (res.cams[key] == 0).all() and (res.ranges[key] == 0).all()
    with warnings.catch_warnings():  # the logits are fine: no warning there
        warnings.simplefilter("error")
        assert not explainer(model).explain(x).flags.any()


def test_non_finite_gradients_with_finite_activations(rng):
    model = net(divide=True)
    x = items(rng, "normal", "dead")
    with pytest.warns(NumericsWarning):
        res = explainer(model).explain(x, layers="relu", methods=["gradcam", "eigencam"])
    want = RowFlag.SCORE_NONFINITE | RowFlag.GRADIENT_NONFINITE
    assert res.flags[1] & want == want and not res.flags[1] & RowFlag.ACTIVATION_NONFINITE
    assert np.isnan(res.cam("gradcam")[1]).all()
    assert np.isfinite(res.cam("eigencam")[1]).all()  # gradient-free: its map stands
    assert res.flags[0] == 0


def test_a_constant_map_is_flagged(rng):
    """Post-ReLU activations all zero (gradient not zero): nothing to show."""
    res = explainer(net()).explain(items(rng, "normal", "dead"), layers="relu")
    assert res.flags.tolist() == [0, RowFlag.CONSTANT_MAP]
    assert (res.cam()[1] == 0).all()


def test_flags_survive_save_and_older_files_load(rng, tmp_path):
    x = items(rng, "normal", "dead", "nan")
    with pytest.warns(NumericsWarning):
        res = explainer(net()).explain(x, layers="conv", nonfinite="flag")
    path = tmp_path / "res.npz"
    res.save(path)
    back = onnx_cam.Explanation.load(path)
    assert back.flags.dtype == np.uint8
    np.testing.assert_array_equal(back.flags, res.flags)
    assert back.flagged.tolist() == [1, 2]
    assert "dead or saturated" in " ".join(back.flag_reasons(1))
    with np.load(path, allow_pickle=False) as data:  # as saved before flags existed
        older = {k: data[k] for k in data.files if k != "flags"}
    np.savez(tmp_path / "old.npz", **older)
    old = onnx_cam.Explanation.load(tmp_path / "old.npz")
    assert old.flags.tolist() == [0, 0, 0]
    np.testing.assert_array_equal(old.cam(), res.cam())


def test_flags_are_distinct_bits_with_reasons():
    values = [int(f) for f in RowFlag]
    assert all(v & (v - 1) == 0 for v in values) and len(set(values)) == len(values)
    assert max(values) < 256  # stored as uint8
    both = RowFlag.INPUT_NONFINITE | RowFlag.ZERO_GRADIENT
    assert describe_flags(both) == describe_flags(RowFlag.INPUT_NONFINITE) + describe_flags(
        RowFlag.ZERO_GRADIENT)
    assert describe_flags(0) == []
