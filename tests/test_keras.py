"""Keras models through tf2onnx: layer map, channels-last layout, CAMs against GradientTape.

The reference never uses onnx-cam: a Keras sub-model gives the layer's output A (channels
last), a second sub-model from that layer (plus any skip input it needs) to the final Dense
layer's input gives the features, and the logits are formed from the Dense layer's own kernel
and bias, i.e. before its softmax. tf.GradientTape gives d(sum(seed * logits)) / dA.
Activations and gradients must agree to 1e-4 of the reference's largest magnitude; raw
Grad-CAM / HiResCAM to 1e-4 of the largest magnitude of the terms they sum (sum_c |w_c A_c| or
sum_c |g_c A_c| per position), since a sum that cancels is only as exact as its terms.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
keras = pytest.importorskip("keras")

import onnx_cam  # noqa: E402
from onnx_cam import kernels  # noqa: E402
from onnx_cam.converters import LAYER_MAP_KEY, LAYOUT_KEY, SOURCE_KEY, export_keras  # noqa: E402
from onnx_cam.errors import InputError, ModelLoadError  # noqa: E402

L = keras.layers
RTOL = 1e-4


# ----------------------------------------------------------------------------- test models
def randomize_batchnorm(model) -> None:
    """Non-trivial BatchNormalization statistics (fresh layers are the identity)."""
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.3, beta.shape),
                               rng.normal(0, 0.3, mean.shape), rng.uniform(0.5, 1.5, var.shape)])


def model_1d():
    """Conv1D, MaxPooling1D, GlobalAveragePooling1D, Dense with a fused softmax."""
    inp = keras.Input((40, 2))
    h = L.Conv1D(6, 3, padding="same", activation="relu", name="conv1d_a")(inp)
    h = L.MaxPooling1D(2, name="pool")(h)
    h = L.Conv1D(8, 3, padding="same", name="conv1d_b")(h)
    h = L.ReLU(name="relu_b")(h)
    h = L.GlobalAveragePooling1D(name="gap")(h)
    return keras.Model(inp, L.Dense(3, activation="softmax", name="dense")(h), name="net1d")


def model_2d():
    """Conv2D + BatchNormalization, MaxPooling2D, a DepthwiseConv2D block with a residual Add."""
    inp = keras.Input((12, 10, 3))
    h = L.Conv2D(8, 3, padding="same", name="conv_a")(inp)
    h = L.BatchNormalization(name="bn_a")(h)
    h = L.ReLU(name="relu_a")(h)
    skip = L.MaxPooling2D(2, name="pool")(h)
    h = L.DepthwiseConv2D(3, padding="same", name="dw")(skip)
    h = L.BatchNormalization(name="bn_dw")(h)
    h = L.Activation("relu", name="relu_dw")(h)
    h = L.Conv2D(8, 1, name="pw")(h)
    h = L.Add(name="add")([h, skip])
    h = L.ReLU(name="relu_out")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inp, L.Dense(4, activation="softmax", name="dense")(h), name="net2d")
    randomize_batchnorm(model)
    return model


def model_3d():
    """Conv3D, MaxPooling3D, Conv3D, a plain Dense (no head).

    The layers compared with GradientTape are those at and above the pool: TensorFlow's
    MaxPool3D gradient gives the full gradient to *every* maximum of a window, counting values
    within ~1e-5 relative of each other as tied, where onnx-cam (like torch and TensorFlow's
    2D pooling) gives it to the first maximum; below the pool the two can differ wherever a
    window nearly ties. See the README.
    """
    inp = keras.Input((6, 8, 8, 2))
    h = L.Conv3D(4, 3, padding="same", activation="relu", name="conv3d_a")(inp)
    h = L.MaxPooling3D(2, name="pool")(h)
    h = L.Conv3D(6, 3, padding="same", activation="relu", name="conv3d_b")(h)
    h = L.Conv3D(5, 3, padding="same", name="conv3d_c")(h)
    h = L.GlobalAveragePooling3D(name="gap")(h)
    return keras.Model(inp, L.Dense(3, name="logits")(h), name="net3d")


def model_lstm():
    """Conv1D + LSTM hybrid: tf2onnx emits an ONNX LSTM node."""
    inp = keras.Input((30, 2))
    h = L.Conv1D(6, 3, padding="same", activation="relu", name="conv")(inp)
    h = L.MaxPooling1D(2, name="pool")(h)
    h = L.LSTM(5, name="lstm")(h)
    return keras.Model(inp, L.Dense(3, activation="softmax", name="dense")(h), name="hybrid")


def model_2d_more():
    """More Keras layers tf2onnx turns into other ops: ZeroPadding2D (Pad), a strided Conv2D,
    LeakyReLU, SeparableConv2D (two Convs) with swish, AveragePooling2D, Concatenate,
    LayerNormalization (decomposed), Conv2DTranspose (ConvTranspose), Cropping2D (Slice on
    every axis, the batch axis included), ELU, GlobalMaxPooling2D."""
    inp = keras.Input((16, 14, 3))
    h = L.ZeroPadding2D(1, name="zpad")(inp)
    h = L.Conv2D(8, 3, strides=2, padding="same", name="strided")(h)
    h = L.LeakyReLU(0.1, name="lrelu")(h)
    h = L.SeparableConv2D(8, 3, padding="same", activation="swish", name="sep")(h)
    h = L.AveragePooling2D(2, name="avg")(h)
    branch = L.Conv2D(4, 1, activation="relu", name="branch")(h)
    h = L.Concatenate(name="cat")([h, branch])
    h = L.LayerNormalization(name="ln")(h)
    h = L.Conv2DTranspose(6, 3, strides=2, padding="same", name="up")(h)
    h = L.Cropping2D(1, name="crop")(h)
    h = L.Conv2D(6, 3, activation="elu", name="last")(h)
    h = L.GlobalMaxPooling2D(name="gmp")(h)
    return keras.Model(inp, L.Dense(3, activation="softmax", name="dense")(h), name="more2d")


def model_1d_more():
    """Causal dilated Conv1D (Pad), a strided Conv1D, Cropping1D, Flatten and a Dense with a
    fused sigmoid."""
    inp = keras.Input((24, 2))
    h = L.Conv1D(5, 3, padding="causal", dilation_rate=2, activation="relu", name="causal")(inp)
    h = L.Conv1D(6, 3, strides=2, padding="same", activation="tanh", name="down")(h)
    h = L.Conv1D(4, 3, padding="same", name="last")(h)
    h = L.Cropping1D((1, 2), name="crop")(h)
    h = L.Flatten(name="flat")(h)
    return keras.Model(inp, L.Dense(3, activation="sigmoid", name="dense")(h), name="more1d")


def model_gru():
    """Conv1D -> GRU(return_sequences) -> Conv1D -> GlobalAveragePooling1D -> Dense: tf2onnx
    writes the GRU as a Loop, which onnx-cam unrolls."""
    inp = keras.Input((16, 2))
    h = L.Conv1D(4, 3, padding="same", activation="relu", name="conv")(inp)
    h = L.GRU(5, return_sequences=True, name="gru")(h)
    h = L.Conv1D(6, 3, padding="same", activation="relu", name="conv2")(h)
    h = L.GlobalAveragePooling1D(name="gap")(h)
    return keras.Model(inp, L.Dense(3, activation="softmax", name="dense")(h), name="gru1d")


def model_rnn_last():
    """Conv1D -> MaxPooling1D -> SimpleRNN (last state only) -> Dense, and Conv1D -> a
    Bidirectional GRU (a reversed Loop between ReverseSequence nodes) -> Dense: every
    explained layer lies below a Loop."""
    inp = keras.Input((14, 3))
    h = L.Conv1D(4, 3, padding="same", activation="relu", name="conv")(inp)
    h = L.MaxPooling1D(2, name="pool")(h)
    both = L.Concatenate(name="cat")([L.SimpleRNN(5, name="rnn")(h),
                                      L.Bidirectional(L.GRU(3), name="bigru")(h)])
    return keras.Model(inp, L.Dense(3, name="logits")(both), name="rnn1d")


@dataclass
class Case:
    build: object
    layers: list[str]                       # layers explained and checked
    skips: dict[str, list[str]] = field(default_factory=dict)  # extra inputs of the rest
    head: str | None = "Softmax"
    mapped: set[str] = field(default_factory=set)  # layers the map must contain


CASES = {
    "1d": Case(model_1d, ["conv1d_a", "pool", "conv1d_b", "relu_b"],
               mapped={"conv1d_a", "pool", "conv1d_b", "relu_b", "gap", "dense"}),
    "2d": Case(model_2d, ["bn_a", "relu_a", "pool", "dw", "bn_dw", "relu_dw", "pw", "add",
                          "relu_out"],
               skips={name: ["pool"] for name in ("dw", "bn_dw", "relu_dw", "pw")},
               mapped={"bn_a", "relu_a", "pool", "dw", "bn_dw", "relu_dw", "pw", "add",
                       "relu_out", "gap", "dense"}),
    "3d": Case(model_3d, ["pool", "conv3d_b", "conv3d_c"], head=None,
               mapped={"conv3d_a", "pool", "conv3d_b", "conv3d_c", "gap", "logits"}),
    "lstm": Case(model_lstm, ["conv", "pool"], mapped={"conv", "pool", "lstm", "dense"}),
    "2d_more": Case(model_2d_more, ["strided", "lrelu", "sep", "avg", "branch", "cat", "ln",
                                    "up", "crop", "last"],
                    skips={"branch": ["avg"]},
                    mapped={"strided", "lrelu", "sep", "avg", "branch", "cat", "ln", "up",
                            "crop", "last", "gmp", "dense"}),
    "gru": Case(model_gru, ["conv", "gru", "conv2"], mapped={"conv", "gru", "conv2", "gap"}),
    "rnn_last": Case(model_rnn_last, ["conv", "pool"], head=None,
                     mapped={"conv", "pool", "rnn", "cat", "logits"}),
    "1d_more": Case(model_1d_more, ["causal", "down", "last", "crop"], head="Sigmoid",
                    mapped={"causal", "down", "last", "crop", "flat", "dense"}),
}


@pytest.fixture(scope="module")
def built():
    """(keras model, Explainer, input) per case, converted once."""
    cache = {}

    def get(key):
        if key not in cache:
            keras.utils.set_random_seed(list(CASES).index(key))
            model = CASES[key].build()
            x = np.random.default_rng(7).standard_normal((4, *model.inputs[0].shape[1:]))
            cache[key] = (model, onnx_cam.Explainer(model), x.astype(np.float32))
        return cache[key]
    return get


# ----------------------------------------------------------------------------- the reference
def tape_reference(model, layer_name: str, x: np.ndarray, seeds: np.ndarray | None,
                   skips=()):
    """Logits before the final softmax, the layer's output A and d(seed . logits)/dA.

    seeds None: the one-hot predicted class. A and the gradient are channels last, as Keras
    gives them.
    """
    final = model.layers[-1]
    layer = model.get_layer(layer_name)
    extra_layers = [model.get_layer(s).output for s in skips]
    acts = keras.Model(model.inputs[0], layer.output)(x)
    extra = [keras.Model(model.inputs[0], t)(x) for t in extra_layers]
    rest = keras.Model([layer.output, *extra_layers], final.input)
    with tf.GradientTape() as tape:
        tape.watch(acts)
        features = rest([acts, *extra] if extra else acts, training=False)
        logits = tf.matmul(features, final.kernel) + final.bias
        if seeds is None:
            seeds = tf.one_hot(tf.argmax(logits, axis=1), logits.shape[1]).numpy()
        score = tf.reduce_sum(logits * seeds)
    grads = tape.gradient(score, acts)
    return logits.numpy(), acts.numpy(), grads.numpy()


def cam_reference(acts: np.ndarray, grads: np.ndarray):
    """Raw Grad-CAM and HiResCAM from channels-last A and dA, in float64, and their scales."""
    a, g = acts.astype(np.float64), grads.astype(np.float64)
    spatial = tuple(range(1, a.ndim - 1))
    weighted = g.mean(axis=spatial, keepdims=True) * a
    elementwise = g * a
    return ((np.maximum(weighted.sum(-1), 0), np.abs(weighted).sum(-1).max()),
            (np.maximum(elementwise.sum(-1), 0), np.abs(elementwise).sum(-1).max()))


def assert_close(got, ref, what: str, scale: float | None = None, rtol: float = RTOL):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != reference {ref.shape}"
    scale = float(np.abs(ref).max()) if scale is None else scale
    err = float(np.abs(got - ref).max())
    assert err <= rtol * scale + 1e-12, f"{what}: max error {err:.3g} > {rtol} x {scale:.3g}"


def channels_first(a: np.ndarray) -> np.ndarray:
    return np.moveaxis(a, -1, 1)


# ----------------------------------------------------------------------------- fidelity
@pytest.mark.parametrize("key", list(CASES))
@pytest.mark.parametrize("targets", ["given", None])
def test_gradcam_hirescam_equal_gradient_tape(built, key, targets):
    case = CASES[key]
    model, exp, x = built(key)
    assert exp.head == case.head
    classes = exp.num_classes
    chosen = None if targets is None else np.arange(len(x)) % classes
    res = exp.explain(x, targets=chosen, layers=case.layers, methods=["gradcam", "hirescam"])
    _, arrays = exp.activations_and_gradients(x, targets=chosen, layers=case.layers)
    seeds = None if chosen is None else np.eye(classes, dtype=np.float32)[chosen]
    for name in case.layers:
        logits, acts, grads = tape_reference(model, name, x, seeds, case.skips.get(name, ()))
        assert_close(res.logits, logits, f"{key} logits")
        got_a, got_g = arrays[name]
        assert_close(got_a, channels_first(acts), f"{key} {name} activations")
        assert_close(got_g, channels_first(grads), f"{key} {name} gradients")
        (gradcam, gc_scale), (hirescam, hr_scale) = cam_reference(acts, grads)
        assert_close(res.raw("gradcam", name), gradcam, f"{key} {name} Grad-CAM", gc_scale)
        assert_close(res.raw("hirescam", name), hirescam, f"{key} {name} HiResCAM", hr_scale)
        # maps come back in the input's own spatial layout: (N, T), (N, H, W), (N, D, H, W)
        assert res.cam("gradcam", name).shape == (len(x), *x.shape[1:-1])
    np.testing.assert_array_equal(res.predicted, logits.argmax(1))


def test_fused_softmax_dense_still_gives_logits(built):
    model, exp, x = built("1d")
    assert model.layers[-1].activation is keras.activations.softmax
    assert exp.head == "Softmax"
    res = exp.explain(x)
    final = model.layers[-1]
    features = keras.Model(model.inputs[0], final.input)(x).numpy()
    logits = features @ final.kernel.numpy() + final.bias.numpy()
    assert_close(res.logits, logits, "logits before the fused softmax")
    assert_close(res.probs, model(x, training=False).numpy(), "probabilities")


# ----------------------------------------------------------------------------- the layer map
@pytest.mark.parametrize("key", list(CASES))
def test_layer_map_holds_the_keras_outputs(built, key):
    """Every mapped layer's tensor holds that layer's output (checked with onnxruntime, as is
    or channels-first); the candidate layers' (N, C, *spatial) views, built from the traced
    axes, equal it moved channels-first, which pins the layout down."""
    case = CASES[key]
    model, exp, x = built(key)
    meta = {p.key: p.value for p in exp.model.proto.metadata_props}
    assert meta[SOURCE_KEY] == "keras" and meta[LAYOUT_KEY] == "channels_last"
    layer_map = json.loads(meta[LAYER_MAP_KEY])
    assert case.mapped <= set(layer_map), sorted(case.mapped - set(layer_map))
    names = sorted(layer_map)
    keras_values = keras.Model(model.inputs[0], [model.get_layer(n).output for n in names])(x)
    values = dict(zip(names, (np.asarray(v) for v in keras_values)))
    onnx_values = run_tensors(exp.model.proto, [layer_map[n] for n in names], x)
    for name, got in zip(names, onnx_values):
        want = values[name]
        squeezed = got.reshape(got.shape[:1] + tuple(d for d in got.shape[1:] if d != 1))
        if want.ndim >= 3 and not (squeezed.shape == want.shape
                                   and np.allclose(squeezed, want, rtol=1e-3, atol=1e-5)):
            squeezed = np.moveaxis(squeezed, 1, -1)  # held channels-first inside the graph
        assert_close(squeezed, want, f"{key} tensor of {name}")
    candidates = [n for n in names if n in exp.layers]
    assert set(case.layers) <= set(candidates)  # conv3d_a's view is checked here too
    _, arrays = exp.activations_and_gradients(x, targets=0, layers=candidates)
    for name in candidates:
        assert_close(arrays[name][0], channels_first(values[name]), f"{key} view of {name}")


def run_tensors(proto: onnx.ModelProto, names: list[str], x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    present = {o.name for o in probe.graph.output}
    for name in dict.fromkeys(names):
        if name not in present:
            probe.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(names, {probe.graph.input[0].name: x})


def test_conv1d_pool_is_a_layer_with_its_unit_axis(built):
    """tf2onnx runs MaxPooling1D as a 2D MaxPool feeding the next 2D Conv: the layer's only
    tensor is (N, C, 1, T); onnx-cam drops the unit axis."""
    _, exp, _ = built("1d")
    pool = next(layer for layer in exp.layer_info if layer.name == "pool")
    assert pool.op == "MaxPool" and pool.axes == (0, 1, None, 2)
    assert pool.shape[1:] == (6, 20)


def test_bn_folded_into_conv_maps_the_bn_layer(built):
    """TensorFlow folds the BatchNormalization into the convolution before it: the merged
    Conv's output is the BN layer's; the Conv2D layer has no tensor of its own."""
    _, exp, _ = built("2d")
    bn = next(layer for layer in exp.layer_info if layer.name == "bn_a")
    assert bn.op == "Conv"
    assert "conv_a" not in exp.model.layer_map


# ----------------------------------------------------------------------------- layout
def test_input_layout_is_checked(built):
    _, exp, x = built("1d")
    with pytest.raises(InputError, match="channels"):
        exp.explain(x[..., :1])
    with pytest.raises(InputError, match="model takes channels-last"):
        exp.explain(np.swapaxes(x, 1, 2))  # channels-first data for a channels-last model
    with pytest.raises(InputError, match=r"\(N, T, C\)"):
        exp.explain(x[0])


def test_channels_last_argument_for_onnx_made_elsewhere(built):
    """An ONNX file without onnx-cam metadata: channels_last=True (or the layout found from
    the graph) gives the same maps."""
    _, exp, x = built("2d")
    bare = onnx.ModelProto()
    bare.CopyFrom(exp.model.proto)
    del bare.metadata_props[:]
    other = onnx_cam.Explainer(bare.SerializeToString(), channels_last=True)
    assert other.model.channels_last
    want = exp.explain(x, targets=1, layers="relu_out", methods=["gradcam", "hirescam"])
    tensor = exp.model.resolve_layer("relu_out").tensor
    got = other.explain(x, targets=1, layers=tensor, methods=["gradcam", "hirescam"])
    assert other.layers[0] == tensor  # the deepest layer, found without names
    for method in ("gradcam", "hirescam"):
        np.testing.assert_allclose(got.raw(method, tensor), want.raw(method, "relu_out"),
                                   rtol=1e-6, atol=1e-7)
    # without metadata nor argument: the first Conv reads the input's last axis as channels
    assert onnx_cam.Explainer(bare.SerializeToString()).model.channels_last
    forced = onnx_cam.Explainer(bare.SerializeToString(), channels_last=False)
    assert not forced.model.channels_last


def test_perturbation_methods_on_channels_last_layers(built):
    """Ablation-CAM feeds the layer's channels-first view back into the head; Score-CAM masks
    the channels-last input: both against the Keras model itself."""
    model, exp, x = built("1d")
    x = x[:2]
    final = model.layers[-1]
    target = 1
    for name in ("pool", "conv1d_b"):  # a (N, C, 1, T) tensor and a (N, C, T) one
        layer = model.get_layer(name)
        acts = keras.Model(model.inputs[0], layer.output)(x).numpy()
        rest = keras.Model(layer.output, final.input)
        res = exp.explain(x, targets=target, layers=name, methods=["ablationcam", "scorecam"])
        for i in range(len(x)):
            item = acts[i]
            fill = 0.0 if item.min() == 0 else item.min() - 1e7
            variants = np.repeat(item[None], item.shape[-1] + 1, axis=0)
            for c in range(item.shape[-1]):
                variants[c + 1, ..., c] = fill
            scores = (rest(variants, training=False).numpy() @ final.kernel.numpy()
                      + final.bias.numpy())[:, target]
            weights = (scores[0] - scores[1:]) / scores[0]
            ablation = np.maximum((item * weights).sum(-1), 0)
            assert_close(res.raw("ablationcam", name)[i], ablation, f"Ablation-CAM {name}",
                         np.abs(item * weights).sum(-1).max())

            masks = kernels.resize(np.ascontiguousarray(channels_first(item[None])[0]),
                                   x.shape[1:-1], align_corners=True)
            flat = masks.reshape(len(masks), -1)
            lo, hi = flat.min(1)[:, None], flat.max(1)[:, None]
            masks = (masks - lo) / (hi - lo + 1e-8)
            masked = x[i][None] * masks[..., None]  # (C, T, C_in): channels last
            logits = keras.Model(model.inputs[0], final.input)(masked).numpy() \
                @ final.kernel.numpy() + final.bias.numpy()
            s = logits[:, target]
            weights = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
            score = np.maximum((item * weights).sum(-1), 0)
            assert_close(res.raw("scorecam", name)[i], score, f"Score-CAM {name}",
                         np.abs(item * weights).sum(-1).max())


# ----------------------------------------------------------------------------- inputs
def test_class_names_and_save_model(built, tmp_path):
    model, _, x = built("3d")
    exp = onnx_cam.Explainer(model, class_names=["a", "b", "c"])
    path = tmp_path / "net3d.onnx"
    exp.save_model(path)
    again = onnx_cam.Explainer(path)
    assert again.class_names == ["a", "b", "c"] and again.model.channels_last
    r1 = exp.explain(x, targets="b", layers="conv3d_c")
    r2 = again.explain(x, targets="b", layers="conv3d_c")
    np.testing.assert_array_equal(r1.cam("gradcam", "conv3d_c"), r2.cam("gradcam", "conv3d_c"))


def test_free_length_axis():
    """A model taking any length converts with a free time axis; each length gets its graph."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((None, 2))
    h = L.Conv1D(5, 3, padding="same", activation="relu", name="conv")(inp)
    h = L.GlobalMaxPooling1D(name="gmp")(h)
    model = keras.Model(inp, L.Dense(3, name="dense")(h))
    proto = export_keras(model)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and dims[1].dim_param and dims[2].dim_value == 2
    exp = onnx_cam.Explainer(proto)
    for length in (24, 37):
        x = np.random.default_rng(length).standard_normal((3, length, 2)).astype(np.float32)
        res = exp.explain(x, targets=[0, 1, 2], layers="conv", methods="hirescam")
        _, acts, grads = tape_reference(model, "conv", x, np.eye(3, dtype=np.float32))
        _, (hirescam, scale) = cam_reference(acts, grads)
        assert_close(res.raw("hirescam", "conv"), hirescam, f"length {length}", scale)
        assert res.cam("hirescam", "conv").shape == (3, length)


def test_nested_model_layers_are_named():
    """Sequential([base, ...]): the layers inside `base` get their own names."""
    keras.utils.set_random_seed(4)
    inp = keras.Input((16, 16, 3))
    h = L.Conv2D(4, 3, activation="relu", name="block1_conv1")(inp)
    h = L.Conv2D(6, 3, activation="relu", name="block1_conv2")(h)
    base = keras.Model(inp, h, name="base")
    model = keras.Sequential([keras.Input((16, 16, 3)), base, L.GlobalAveragePooling2D(),
                              L.Dropout(0.5, name="drop"), L.Dense(3, name="dense")])
    exp = onnx_cam.Explainer(model)
    assert {"block1_conv1", "block1_conv2", "base"} <= set(exp.model.layer_map)
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)
    _, arrays = exp.activations_and_gradients(x, targets=0, layers=["block1_conv1", "base"])
    inner = keras.Model(base.inputs[0], base.get_layer("block1_conv1").output)(x).numpy()
    assert_close(arrays["block1_conv1"][0], channels_first(inner), "nested layer")
    assert_close(arrays["base"][0], channels_first(base(x).numpy()), "nested model")


def test_saved_model_and_keras_file(built, tmp_path):
    model, exp, x = built("1d")
    saved = tmp_path / "saved"
    model.export(str(saved), verbose=False)
    from_saved = onnx_cam.Explainer(export_keras(str(saved)))
    assert from_saved.model.channels_last and from_saved.model.layer_map == {}
    np.testing.assert_allclose(from_saved.explain(x).logits, exp.explain(x).logits,
                               rtol=1e-5, atol=1e-6)
    path = tmp_path / "net1d.keras"
    model.save(path)
    from_file = export_keras(str(path), class_names=["x", "y", "z"])
    meta = {p.key: p.value for p in from_file.metadata_props}
    assert "relu_b" in json.loads(meta[LAYER_MAP_KEY])
    assert json.loads(meta["onnx_cam.class_names"]) == ["x", "y", "z"]


def test_not_a_keras_model():
    with pytest.raises(ValueError, match="Keras model"):
        export_keras(object())
    with pytest.raises(ValueError, match="opset"):
        export_keras(model_1d(), opset=13)


def test_import_onnx_cam_without_tensorflow(tmp_path):
    """TF, Keras and tf2onnx made unimportable: onnx_cam and its converters still import."""
    code = ("import sys\n"
            "for name in ('tensorflow', 'keras', 'tf2onnx', 'tf_keras'):\n"
            "    sys.modules[name] = None\n"
            "import onnx_cam, onnx_cam.converters\n"
            "from onnx_cam.converters import export_keras\n"
            "assert not onnx_cam.converters.keras_export.is_keras_model(object())\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


# ----------------------------------------------------------------------------- limits
def test_unconvertible_op_is_named():
    inp = keras.Input((8, 3))
    h = L.GlobalAveragePooling1D()(L.Conv1D(4, 3, activation="gelu")(inp))  # exact gelu: Erfc
    with pytest.raises(ModelLoadError, match="Erfc"):
        onnx_cam.Explainer(keras.Model(inp, L.Dense(2)(h)))
