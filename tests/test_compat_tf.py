"""onnx_cam.compat.TfCamBuilder on a Keras Conv1D model against tf.GradientTape (and against
SignalGrad-CAM 2.2.0's TfCamBuilder where it is installed).

The reference differentiates SignalGrad-CAM's score of the Keras model itself with
tf.GradientTape: log(clip(p, eps, 1 - eps)) of the softmax output for the target (minus the
foil's), Grad-CAM / HiResCAM on the layer's channels-last output; the 0..255 scaling and the
resize are the torch re-derivation of tests/test_compat.py.
"""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
keras = pytest.importorskip("keras")

from test_compat import (  # noqa: E402
    assert_cams,
    assert_ranges,
    assert_same_types,
    reference_cams,
)

from onnx_cam.compat import TfCamBuilder  # noqa: E402
from onnx_cam.errors import UnsupportedModelError  # noqa: E402

pytestmark = pytest.mark.slow  # converts a Keras model with tf2onnx
L = keras.layers


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((40, 2))
    h = L.Conv1D(5, 3, padding="same", activation="relu", name="conv1")(inp)
    h = L.Conv1D(6, 3, strides=2, padding="same", activation="relu", name="conv2")(h)
    h = L.GlobalAveragePooling1D(name="gap")(h)
    return keras.Model(inp, L.Dense(3, activation="softmax", name="head")(h))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return [rng.standard_normal((40, 2)).astype(np.float32) for _ in range(4)]


def tape_reference(model, layer, batch, target, foil, method, eps=1e-6):
    """Raw maps (n, T_layer) of SignalGrad-CAM's softmax_final=True score by GradientTape."""
    probe = keras.Model(model.inputs, [model.get_layer(layer).output, model.output])
    with tf.GradientTape() as tape:
        acts, probs = probe(tf.constant(batch))
        scores = tf.math.log(tf.clip_by_value(probs, eps, 1 - eps))
        score = scores[:, target] - (0 if foil is None else scores[:, foil])
    grads = tape.gradient(score, acts).numpy()
    acts = acts.numpy()
    if method == "Grad-CAM":
        raw = (grads.mean(axis=1, keepdims=True) * acts).sum(-1)
    else:
        raw = (grads * acts).sum(-1)
    return np.maximum(raw, 0)


def test_matches_gradient_tape(model, data):
    builder = TfCamBuilder(model, class_names=["a", "b", "c"], time_axs=0)
    cams, probs, ranges = builder.get_cam(data, 0, [0, 2], ["Grad-CAM", "HiResCAM"],
                                          ["conv2", "conv1"], True, contrastive_foils=[None, 1])
    assert len(cams) == 2 * 2 * 2 * 2
    expected_probs = model(np.stack(data)).numpy()
    for method in ("Grad-CAM", "HiResCAM"):
        for layer in ("conv2", "conv1"):
            for target in (0, 2):
                for foil in (None, 1):
                    key = builder.get_item_key(method, layer, target, foil)
                    raw = tape_reference(model, layer, np.stack(data), target, foil, method)
                    assert raw.max() > 0
                    expected, low, high = reference_cams(raw, (40,))
                    assert_cams(cams[key], expected)
                    assert_ranges(ranges[key], low, high, 1)
                    columns = [target] if foil is None else [target, foil]
                    np.testing.assert_allclose(probs[key].numpy().reshape(4, -1),
                                               expected_probs[:, columns], rtol=1e-5)


def signal_grad_cam_results(model, call: dict, **constructor) -> tuple:
    """SignalGrad-CAM's own TfCamBuilder.get_cam (drawing off, as in test_compat.py's sgc
    fixture)."""
    sgc = pytest.importorskip("signal_grad_cam", reason="signal-grad-cam is not installed")
    from signal_grad_cam import cam_builder

    resize = cam_builder.cv2.resize
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cam_builder.CamBuilder, "_CamBuilder__display_output",
                      lambda self, *args, **kwargs: None)
        patch.setattr(cam_builder.cv2, "resize", lambda a, size, *args, **kwargs: resize(
            a[:, None] if a.ndim == 1 else a, size, *args, **kwargs))
        with contextlib.redirect_stdout(io.StringIO()):
            return sgc.TfCamBuilder(model, **constructor).get_cam(**call)


def assert_same_as_signal_grad_cam(ours: tuple, theirs: tuple) -> None:
    for mine, their in zip(ours, theirs):
        assert list(mine) == list(their)
    for key in theirs[0]:
        assert_cams(ours[0][key], theirs[0][key], mismatched=0)
        assert isinstance(theirs[1][key], tf.Tensor)  # what callers of .numpy() rely on
        np.testing.assert_allclose(ours[1][key].numpy(), theirs[1][key].numpy(), rtol=1e-4,
                                   atol=1e-7)
        assert_same_types(ours, theirs, key)
        for a, b in zip(ours[2][key], theirs[2][key]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_same_results_as_signal_grad_cam(model, data):
    call = dict(data_list=data, data_labels=0, target_classes=[0, 2],
                explainer_types=["Grad-CAM", "HiResCAM"], target_layers="conv2",
                softmax_final=True, contrastive_foils=[None, 1])
    theirs = signal_grad_cam_results(model, call, time_axs=0)
    assert_same_as_signal_grad_cam(TfCamBuilder(model, time_axs=0).get_cam(**call), theirs)


def test_regression_with_one_output_as_signal_grad_cam_reads_it(data):
    """is_regression_network, one output, target_classes=[0, 1]: SignalGrad-CAM reads the
    output as binary (class 0 explains -y: its score range is class 1's negated) and reports
    1 - sigmoid(y), sigmoid(y). (With softmax_final=True its TfCamBuilder calls
    tf.math.logit, which TensorFlow 2.21 lacks, and fails.)"""
    keras.utils.set_random_seed(1)
    inp = keras.Input((40, 2))
    h = L.Conv1D(5, 3, padding="same", activation="relu", name="conv1")(inp)
    h = L.GlobalAveragePooling1D(name="gap")(h)
    regressor = keras.Model(inp, L.Dense(1, name="head")(h))
    call = dict(data_list=data, data_labels=0, target_classes=[0, 1],
                explainer_types=["Grad-CAM", "HiResCAM"], target_layers="conv1",
                softmax_final=False, avoid_relu=True)
    theirs = signal_grad_cam_results(regressor, call, time_axs=0, is_regression_network=True)
    ours = TfCamBuilder(regressor, time_axs=0, is_regression_network=True).get_cam(**call)
    assert_same_as_signal_grad_cam(ours, theirs)
    y = regressor(np.stack(data)).numpy()[:, 0].astype(np.float64)
    p = 1 / (1 + np.exp(-y))
    for e in ("Grad-CAM", "HiResCAM"):
        np.testing.assert_allclose(ours[1][f"{e}_conv1_class0"].numpy(), 1 - p, rtol=1e-5)
        np.testing.assert_allclose(ours[1][f"{e}_conv1_class1"].numpy(), p, rtol=1e-5)
        (low0, high0), (low1, high1) = ours[2][f"{e}_conv1_class0"], ours[2][f"{e}_conv1_class1"]
        np.testing.assert_allclose(low0, -high1, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(high0, -low1, rtol=1e-5, atol=1e-7)
    figs = TfCamBuilder(regressor, time_axs=0, is_regression_network=True).\
        single_channel_output_display(data, 0, ours[1], ours[0], "Grad-CAM", 0, "conv1",
                                      bar_ranges_dict=ours[2], contrastive_foils=None)
    assert f"(p={1 - p[0]:.2f})" in figs[0].get_suptitle()  # the displays read tf.Tensors


def test_model_without_channel_axis_is_refused_with_the_fix():
    inp = keras.Input((40,))
    h = L.Conv1D(4, 3, padding="same", name="conv1")(L.Reshape((40, 1))(inp))
    model = keras.Model(inp, L.Dense(3, activation="softmax")(L.GlobalAveragePooling1D()(h)))
    builder = TfCamBuilder(model, ignore_channel_dim=True, time_axs=0)
    data = [np.zeros(40, np.float32)]
    with pytest.raises(UnsupportedModelError, match=r"keras.Input\(\(40, 1\)\)"):
        builder.get_cam(data, 0, 0, "Grad-CAM", "conv1", True)


def test_token_ids_through_a_keras_embedding():
    """Integer items of a Keras Embedding -> Conv1D model, against tf.GradientTape."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((20,), dtype="int32")
    h = L.Embedding(30, 6)(inp)
    h = L.Conv1D(8, 3, padding="same", activation="relu", name="conv1")(h)
    h = L.Conv1D(8, 3, padding="same", activation="relu", name="conv2")(h)
    text = keras.Model(inp, L.Dense(3, activation="softmax")(L.GlobalAveragePooling1D()(h)))
    ids = np.random.default_rng(0).integers(0, 30, (3, 20)).astype(np.int32)
    layer_out = keras.Model(inp, [text.get_layer("conv2").output, text.output])
    with tf.GradientTape() as tape:
        a, out = layer_out(ids)
        score = tf.reduce_sum(out[:, 1])
    g, a = tape.gradient(score, a).numpy(), a.numpy()
    raw = np.maximum((g.mean(1, keepdims=True) * a).sum(2), 0)
    expected, low, high = reference_cams(raw, (20,))
    builder = TfCamBuilder(text, is_transformer_network=True)
    cams, _, ranges = builder.get_cam([row[None] for row in ids], 0, 1, "Grad-CAM", "conv2",
                                      False)
    assert_cams(cams["Grad-CAM_conv2_class1"], expected)
    assert_ranges(ranges["Grad-CAM_conv2_class1"], low, high, 1)


def test_keras_exports_are_shared_and_renewed_when_weights_change(data, monkeypatch):
    """Builders of an unchanged Keras model share one conversion; after set_weights the next
    get_cam converts again and matches tf.GradientTape on the new weights."""
    from onnx_cam import Explainer
    from onnx_cam.compat import tf_builder
    from onnx_cam.compat.cache import export_cache

    export_cache.clear()
    made = []
    monkeypatch.setattr(tf_builder, "Explainer", lambda *a, **k: made.append(
        Explainer(*a, **k)) or made[-1])
    keras.utils.set_random_seed(2)
    inp = keras.Input((40, 2))
    h = L.Conv1D(4, 3, padding="same", activation="relu", name="conv1")(inp)
    net = keras.Model(inp, L.Dense(3, activation="softmax")(L.GlobalAveragePooling1D()(h)))

    def check(builder):
        cams, _, ranges = builder.get_cam(data, 0, 1, "Grad-CAM", "conv1", True)
        raw = tape_reference(net, "conv1", np.stack(data), 1, None, "Grad-CAM")
        expected, low, high = reference_cams(raw, (40,))
        assert_cams(cams["Grad-CAM_conv1_class1"], expected)
        assert_ranges(ranges["Grad-CAM_conv1_class1"], low, high, 1)

    builder = TfCamBuilder(net, time_axs=0)
    check(builder)
    check(TfCamBuilder(net, time_axs=0, class_names=["a", "b", "c"]))
    assert len(made) == 1
    kernel, bias = net.get_layer("conv1").get_weights()
    net.get_layer("conv1").set_weights([kernel * -1.5, bias + 0.1])
    check(builder)
    assert len(made) == 2
    export_cache.clear()


def test_keras_fingerprint_hashes_each_weight_by_its_own_content():
    """Each weight is read as a temporary array: the key of one must never be another's (a
    memo by id() gave every weight the first one's digest, which could serve a stale
    conversion after the weights changed)."""
    import hashlib

    from onnx_cam.compat.fingerprint import keras_fingerprint

    keras.utils.set_random_seed(3)
    inp = keras.Input((40, 2))
    h = L.Conv1D(4, 3, padding="same", name="conv1")(inp)
    net = keras.Model(inp, L.Dense(3)(L.GlobalAveragePooling1D()(h)))
    weights = keras_fingerprint(net)[3]
    assert len(weights) == len(net.weights)
    for (_, key), w in zip(weights, net.weights):
        values = np.ascontiguousarray(np.asarray(w))
        assert key[2] == values.shape
        assert key[3] == hashlib.sha256(values.view(np.uint8)).hexdigest()
