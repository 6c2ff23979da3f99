"""Export a Keras model (or a TensorFlow SavedModel) to ONNX with a layer-name -> tensor map.

Route
-----
The model is wrapped in a ``tf.function`` that calls it in inference mode and converted by
``tf2onnx.convert.from_function``. That is exactly what Keras 3's own
``model.export(path, format="onnx")`` does on the TensorFlow backend, minus what makes it less
suitable here: it only writes a file, names the input after an internal Keras tensor
(``keras_tensor_3``), and patches ``numpy`` globally (``np.object``) for older tf2onnx.
``tf2onnx.convert.from_keras`` is not used: with Keras 3 it fails on ``Sequential`` models
(``KeyError`` looking up ``output_names``). TensorFlow, Keras and tf2onnx are imported inside
the functions, so importing this module needs only onnx.

The graph keeps the model's channels-last layout at its input; tf2onnx wraps each
convolution in Transposes (Conv1D also in Unsqueeze / Squeeze around a 2D ``Conv``) and its
optimizer then moves those Transposes, so a layer's output may be channels-first inside the
graph. onnx-cam traces every tensor's axes from the input (see ``onnx_cam.model``).

The layer map
-------------
``metadata_props["onnx_cam.layer_map"]`` is a JSON object ``{keras layer name: tensor name}``.
Node names keep the Keras layer names (``functional_1/conv1d_a_1/Relu``), but names alone are
not reliable (the optimizer renames merged nodes, ``Conv__21``), so each entry is checked
numerically: the Keras model runs once on ``example_input`` (random data by default) and
returns every layer's output; the ONNX graph runs on the same data with every float tensor
exposed; a layer maps to a tensor that holds the same values (to 1e-4 of their largest
magnitude), as they are, channels-first (channel axis moved from last to second), or with
unit axes inserted (the 2D ``Conv`` behind a Conv1D). A tensor made by a node in the layer's
own name scope wins (then one of the layer's rank, then the same layout, then the latest);
failing that, a tensor made elsewhere that no other layer holds, or that of a layer whose
output this one passes on unchanged. So:

* a pass-through layer (Dropout, a no-op Activation) maps to the tensor it passes on;
* a layer whose output no longer exists is left out: TensorFlow folds a BatchNormalization
  into the preceding convolution's weights, so that convolution has no tensor of its own (the
  BN layer maps to the merged Conv's output); a ZeroPadding2D merged into the next Conv too;
* layers called several times (shared layers) are left out;
* the layers of a nested model (``Sequential([base, ...])``) are mapped too, when the nested
  model is applied to the model's input, under their own names (``"base/name"`` if the name
  is also used outside).

A SavedModel carries no Keras layers: its graph is converted with an empty map, and its
layers are named by ONNX node or tensor name.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from contextlib import contextmanager
from typing import Any

import numpy as np
import onnx

from .metadata import CHANNELS_FIRST, CHANNELS_LAST, annotate

_NOMINAL_SIZE = 64  # spatial size used for the layer-map check when the model leaves it free


def is_keras_model(obj: Any) -> bool:
    """True for a Keras 3 or tf.keras (tf_keras) model, without importing either."""
    return _keras_of(obj) is not None


def _keras_of(obj: Any):
    """The Keras package `obj` is a model of (keras or tf_keras), or None. A model can only
    exist once its package is imported, so sys.modules is enough."""
    for name in ("keras", "tf_keras"):
        module = sys.modules.get(name)
        cls = getattr(module, "Model", None) if module is not None else None
        if isinstance(cls, type) and isinstance(obj, cls):
            return module
    return None


def export_keras(
    model: Any,
    path: str | os.PathLike[str] | None = None,
    *,
    opset: int = 17,
    class_names: list[str] | None = None,
    example_input: Any = None,
    input_name: str = "input",
    output_name: str = "output",
) -> onnx.ModelProto:
    """Convert a Keras model to ONNX with a dynamic batch axis and a layer -> tensor map.

    Args:
        model: a Keras model (Keras 3 on the TensorFlow backend, or tf.keras), a path to a
            ``.keras`` / ``.h5`` file, or a TensorFlow SavedModel directory.
        path: if given, the ONNX model is also saved there.
        opset: ONNX opset, at least 17.
        class_names: if given, stored with the model so explainers name its classes.
        example_input: a batch the model accepts (numpy, channels-last as the model takes
            it). Used to check the layer map, and for a model that was never called. By
            default two random items, free spatial axes set to 64.
        input_name: name of the graph input.
        output_name: name of the first graph output; further outputs get ``_1``, ``_2``...

    Returns:
        The ``onnx.ModelProto`` with ``onnx_cam.*`` entries in ``metadata_props``
        (``layout`` is ``channels_last`` unless the model's layers are all channels-first).
    """
    if opset < 17:
        raise ValueError(f"opset {opset} is too old; use opset=17 or newer.")
    if isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        if os.path.isdir(source):
            proto, layout, versions = _convert_saved_model(source, opset, input_name,
                                                           output_name)
            return _finish(proto, {}, layout, versions, class_names, path)
        model = _load_keras_file(source)
    keras = _keras_of(model)
    if keras is None:
        raise ValueError(
            f"export_keras needs a Keras model, a .keras / .h5 file or a SavedModel directory, "
            f"got {type(model).__name__}."
        )
    import tensorflow as tf
    import tf2onnx

    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"export_keras converts through TensorFlow, but Keras runs on the "
            f"{keras.backend.backend()!r} backend. Set KERAS_BACKEND=tensorflow."
        )
    shape = _input_shape(model, example_input)
    dtype = _input_dtype(model)
    spec = tf.TensorSpec((None, *shape[1:]), dtype, name=input_name)
    function = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    with _quiet_tf2onnx():
        try:
            proto, _ = tf2onnx.convert.from_function(function, input_signature=[spec],
                                                     opset=opset)
        except Exception as err:
            raise RuntimeError(
                f"tf2onnx (opset {opset}) could not convert {type(model).__name__} "
                f"{getattr(model, 'name', '')!r}: {err}"
            ) from err
    _check_ops(proto)
    _rename_io(proto, input_name, output_name)
    x = _example(example_input, shape, dtype)
    layer_map = _layer_map(model, keras, proto, x)
    versions = {"onnx_cam.keras_version": str(getattr(keras, "__version__", "")),
                "onnx_cam.tensorflow_version": str(tf.__version__),
                "onnx_cam.tf2onnx_version": str(tf2onnx.__version__)}
    return _finish(proto, layer_map, _layout(model), versions, class_names, path)


# ---- conversion -------------------------------------------------------------------------
def _finish(proto: onnx.ModelProto, layer_map: dict[str, str], layout: str,
            versions: dict[str, str], class_names, path) -> onnx.ModelProto:
    return annotate(proto, source="keras", layout=layout, layer_map=layer_map,
                    class_names=class_names, extra=versions, path=path)


@contextmanager
def _quiet_tf2onnx():
    """tf2onnx logs every conversion step at INFO; keep its warnings and errors only."""
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _load_keras_file(source: str) -> Any:
    if not os.path.isfile(source):
        raise ValueError(f"No Keras model file or SavedModel directory at {source!r}.")
    import keras

    try:
        return keras.models.load_model(source, compile=False)
    except Exception as err:
        raise ValueError(f"Keras cannot load {source!r}: {err}") from err


def _input_shape(model: Any, example_input: Any) -> tuple:
    """The model's input shape, batch first (None for free axes)."""
    inputs = getattr(model, "inputs", None)
    if inputs:
        if len(inputs) != 1:
            raise ValueError(f"{model.name!r} has {len(inputs)} inputs; onnx-cam explains "
                             "models with one input tensor.")
        return tuple(inputs[0].shape)
    if example_input is None:
        raise ValueError(
            f"{type(model).__name__} has no defined input (a subclassed model never called); "
            "pass example_input= (a batch the model accepts)."
        )
    return (None, *np.shape(example_input)[1:])


def _input_dtype(model: Any) -> str:
    """The model input's dtype when it takes integers (token ids), else float32."""
    inputs = getattr(model, "inputs", None) or []
    dtype = np.dtype(str(getattr(inputs[0], "dtype", "float32"))) if inputs else None
    return dtype.name if dtype is not None and dtype.kind in "iu" else "float32"


def _example(example_input: Any, shape: tuple, dtype: str = "float32") -> np.ndarray:
    if example_input is not None:
        return np.ascontiguousarray(np.asarray(example_input, dtype=dtype))
    dims = [d if d is not None else _NOMINAL_SIZE for d in shape[1:]]
    rng = np.random.default_rng(0)
    if np.dtype(dtype).kind in "iu":  # token ids: 0 and 1 exist in any vocabulary
        return rng.integers(0, 2, (2, *dims)).astype(dtype)
    return rng.standard_normal((2, *dims)).astype(np.float32)


def _layout(model: Any) -> str:
    """channels_first only when every layer that has a data_format says so."""
    formats, stack = set(), list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop()
        stack.extend(getattr(layer, "layers", []))
        fmt = getattr(layer, "data_format", None)
        if fmt in (CHANNELS_FIRST, CHANNELS_LAST):
            formats.add(fmt)
    return CHANNELS_FIRST if formats == {CHANNELS_FIRST} else CHANNELS_LAST


def _check_ops(proto: onnx.ModelProto) -> None:
    """tf2onnx leaves TensorFlow ops it cannot convert in the graph under their TF names."""
    unknown: dict[str, str] = {}
    stack = [proto.graph]
    while stack:
        graph = stack.pop()
        for node in graph.node:
            if not onnx.defs.has(node.op_type, node.domain):
                unknown.setdefault(node.op_type, node.name)
            for attr in node.attribute:
                stack.extend([attr.g] if attr.HasField("g") else attr.graphs)
    if unknown:
        nodes = ", ".join(f"{op} ({name})" for op, name in sorted(unknown.items()))
        raise RuntimeError(
            f"tf2onnx could not convert these TensorFlow ops to ONNX: {nodes}. Replace the "
            "layer that makes them (e.g. an exact gelu makes Erfc: use "
            "keras.activations.gelu(x, approximate=True))."
        )


def _rename_io(proto: onnx.ModelProto, input_name: str, output_name: str) -> None:
    """Fixed input / output names, and the batch axis called "N" as the torch converter does."""
    graph = proto.graph
    renames = {graph.input[0].name: input_name}
    renames.update({o.name: output_name if i == 0 else f"{output_name}_{i}"
                    for i, o in enumerate(graph.output)})
    renames = {old: new for old, new in renames.items() if old != new}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for i, name in enumerate(node.output):
            if name in renames:
                node.output[i] = renames[name]
    for value in [*graph.input, *graph.output]:
        value.name = renames.get(value.name, value.name)
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "N"


def _convert_saved_model(source: str, opset: int, input_name: str, output_name: str):
    """A SavedModel's serving signature -> ONNX (no Keras layers, so no layer map)."""
    import tensorflow as tf
    import tf2onnx

    loaded = tf.saved_model.load(source)
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise ValueError(f"The SavedModel at {source!r} has no 'serving_default' signature.")
    kwargs = signature.structured_input_signature[1]
    if len(kwargs) != 1:
        raise ValueError(f"The SavedModel's serving signature takes {len(kwargs)} inputs; "
                         "onnx-cam explains models with one input tensor.")
    (key, spec), = kwargs.items()
    outputs = sorted(signature.structured_outputs)
    spec = tf.TensorSpec((None, *spec.shape[1:]), tf.float32, name=input_name)

    def call(x):
        result = signature(**{key: x})
        return [result[k] for k in outputs]

    function = tf.function(call, input_signature=[spec])
    with _quiet_tf2onnx():
        proto, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=opset)
    _rename_io(proto, input_name, output_name)
    return proto, CHANNELS_LAST, {"onnx_cam.tensorflow_version": str(tf.__version__),
                                  "onnx_cam.tf2onnx_version": str(tf2onnx.__version__)}


# ---- the layer map ------------------------------------------------------------------------
def _layer_map(model: Any, keras: Any, proto: onnx.ModelProto, x: np.ndarray) -> dict[str, str]:
    """Each Keras layer -> the ONNX tensor holding its output (see the module docstring)."""
    tensors = _onnx_values(proto, x)
    values = _keras_values(model, keras, x)
    outer = {name for name, _ in values}
    # nested models applied to the model's own input: their layers too
    for layer in model.layers:
        if not getattr(layer, "layers", None) or not getattr(layer, "inputs", None):
            continue
        try:
            value = np.asarray(layer(x, training=False))
        except Exception:
            continue  # not applied to the raw input (or not callable on it)
        if not any(in_scope for in_scope, *_ in _matches(layer.name, value, tensors)):
            continue
        if layer.name not in outer:
            values.append((layer.name, value))
        values.extend((f"{layer.name}/{name}" if name in outer else name, inner)
                      for name, inner in _keras_values(layer, keras, x))
    found = {name: _matches(name.rsplit("/", 1)[-1], value, tensors) for name, value in values}
    keras_value = dict(values)
    layer_map: dict[str, str] = {}
    owner: dict[str, str] = {}
    for name, matches in found.items():  # a tensor made in the layer's own name scope
        if matches and matches[0][0] and matches[0][-1] not in owner:
            layer_map[name] = matches[0][-1]
            owner[matches[0][-1]] = name
    # else, latest layers first, a tensor made elsewhere (the Conv a BatchNormalization was
    # folded into) that no other layer owns, or one whose owner's output this layer passes on
    # unchanged (Dropout); a fresh, near-identity layer never takes another layer's tensor
    for name, matches in reversed(found.items()):
        if name in layer_map:
            continue
        for *_, tensor in matches:
            other = owner.get(tensor)
            if other is None or np.array_equal(keras_value[other], keras_value[name]):
                layer_map[name] = tensor
                owner.setdefault(tensor, name)
                break
    return layer_map


def _keras_values(model: Any, keras: Any, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(layer name, output on x) for every layer of `model` with one well-defined output."""
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return []  # a subclassed model: layers have no symbolic outputs
    named = []
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        try:
            out = layer.output
        except Exception:
            continue  # called several times, or never
        named.append((layer.name, out[0] if isinstance(out, (list, tuple)) else out))
    try:
        probe = keras.Model(inputs[0], [out for _, out in named])
    except Exception:  # some output is not computed from the input (a nested model's own)
        named = [(name, out) for name, out in named if _connected(keras, inputs[0], out)]
        probe = keras.Model(inputs[0], [out for _, out in named]) if named else None
    if probe is None:
        return []
    outputs = probe(x, training=False)
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return [(name, np.asarray(v)) for (name, _), v in zip(named, outputs)]


def _connected(keras: Any, inp: Any, out: Any) -> bool:
    try:
        keras.Model(inp, out)
        return True
    except Exception:
        return False


def _onnx_values(proto: onnx.ModelProto, x: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """(tensor name, producing node name, value on x) of every float tensor, graph order."""
    import onnxruntime as ort

    inferred = onnx.shape_inference.infer_shapes(proto)
    floats = {v.name for v in [*inferred.graph.value_info, *inferred.graph.output]
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    present = {o.name for o in probe.graph.output}
    producers: list[tuple[str, str]] = []
    for node in probe.graph.node:
        for name in node.output:
            if name and name in floats:
                producers.append((name, node.name))
                if name not in present:
                    probe.graph.output.append(
                        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    names = [name for name, _ in producers]
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        values = session.run(names, {probe.graph.input[0].name: x})
    except Exception as err:
        raise RuntimeError(f"onnxruntime cannot run the model tf2onnx made: {err}") from None
    first = [(probe.graph.input[0].name, "", x)]
    return first + [(name, node, v) for (name, node), v in zip(producers, values)]


def _squeezed(a: np.ndarray) -> np.ndarray:
    """`a` without its unit axes after the batch axis."""
    return a.reshape(a.shape[:1] + tuple(d for d in a.shape[1:] if d != 1))


def _relation(value: np.ndarray, keras_value: np.ndarray) -> tuple[bool, bool] | None:
    """How an ONNX value holds a Keras output: (same rank, same layout), or None.

    Equal means within 1e-4 of the output's largest magnitude: float32 kernels of TensorFlow
    and onnxruntime differ by ~1e-6 there, while a fresh BatchNormalization (scale
    1 / sqrt(1 + 1e-3)) already changes its input by 5e-4.
    """
    if value.size != keras_value.size or value.shape[:1] != keras_value.shape[:1]:
        return None
    tol = 1e-4 * float(np.abs(keras_value).max(initial=0.0)) + 1e-7

    def close(a, b):
        return a.shape == b.shape and float(np.abs(a - b).max(initial=0.0)) <= tol

    same_rank = value.ndim == keras_value.ndim
    if close(value, keras_value):
        return True, True
    v, k = _squeezed(value), _squeezed(keras_value)
    if close(v, k):
        return same_rank, True
    if k.ndim >= 3 and close(v, np.moveaxis(k, -1, 1)):
        return same_rank, False
    return None


def _matches(name: str, keras_value: np.ndarray, tensors) -> list[tuple]:
    """ONNX tensors holding `keras_value`, best first: (in the layer's name scope, same rank,
    same layout, graph position, tensor name)."""
    scope = re.compile(rf"(^|/){re.escape(name)}(_\d+)?/")
    found = []
    for index, (tensor, node, value) in enumerate(tensors):
        relation = _relation(value, keras_value)
        if relation is not None:
            found.append((bool(scope.search(node)), *relation, index, tensor))
    return sorted(found, reverse=True)
