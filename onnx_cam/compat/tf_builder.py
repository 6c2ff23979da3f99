"""TfCamBuilder: SignalGrad-CAM's TensorFlow / Keras builder on onnx-cam."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..errors import LayerError, UnsupportedModelError
from ..explainer import Explainer
from ..runtime import CPU, RuntimeOptions
from .builder import CamBuilder
from .cache import export_cache
from .fingerprint import keras_fingerprint

_RUNTIME = RuntimeOptions(providers=(CPU,))


class TfCamBuilder(CamBuilder):
    """SignalGrad-CAM 2.2's ``TfCamBuilder`` (same arguments; see :class:`CamBuilder`).

    The Keras model is converted to ONNX once (``onnx_cam.converters.export_keras``, on the
    first ``get_cam`` call; kept in :mod:`.cache` for every builder of the same weights and
    architecture); explaining never calls TensorFlow. The probabilities come back as
    ``tf.Tensor`` s, as SignalGrad-CAM's do. ``target_layers`` are Keras
    layer names (``"<sequential>.<layer>"`` names a layer inside a nested Sequential, as in
    SignalGrad-CAM). Items are fed as the model takes them (channels last); a model whose
    input has no channel axis (``ignore_channel_dim``) is not supported yet.
    """

    def __init__(self, model, transform_fn: Callable | None = None,
                 class_names: Sequence[str] | None = None, time_axs: int = 1,
                 input_transposed: bool = False, ignore_channel_dim: bool = False,
                 is_regression_network: bool = False, is_transformer_network: bool = False,
                 model_output_index: int | None = None, extend_search: bool = False,
                 padding_dim: int | None = None, seed: int = 11):
        super().__init__(model, transform_fn, class_names, time_axs, input_transposed,
                         ignore_channel_dim, is_regression_network, is_transformer_network,
                         model_output_index, extend_search, padding_dim, seed)

    def _keras_layer(self, layer: str):
        try:
            return self.model.get_layer(layer)
        except ValueError:
            pass
        outer, _, inner = layer.rpartition(".")
        try:
            return self.model.get_layer(outer).get_layer(inner)
        except (ValueError, AttributeError):
            names = [lay.name for lay in self.model.layers]
            raise LayerError(f"target layer {layer!r} is not a layer of the model; its layers "
                             f"are {names[:16]}.") from None

    def _layer_rank(self, layer: str) -> int:
        shape = self._keras_layer(layer).output.shape
        if len(shape) not in (3, 4, 5):
            raise LayerError(f"Layer {layer!r} outputs {tuple(shape)}: a CAM layer has a batch, "
                             "1 to 3 spatial axes and a channel axis.")
        return len(shape) - 2

    def _core_layer(self, layer: str) -> str:
        return self._keras_layer(layer).name

    def _fingerprint(self) -> tuple:
        return keras_fingerprint(self.model)

    def _explainer(self, model_key: tuple, shape: tuple[int, ...], example: np.ndarray,
                   unit_channel: bool) -> Explainer:
        if unit_channel:
            raise UnsupportedModelError(
                f"The Keras model takes items shaped {shape}, without a channel axis; onnx-cam "
                "cannot trace a layer's axes back to such an input yet. Give the model an input "
                f"with a channel axis (keras.Input({(*shape, 1)}), its leading Reshape removed).")
        example = example[:2] if example.dtype.kind in "iu" else example[:2].astype(np.float32)
        index = self.model_output_index or 0
        key = (model_key, example.dtype.str, index, _RUNTIME)
        return export_cache.get(key, lambda: Explainer(
            self.model, example_input=example,
            output="output" if index == 0 else f"output_{index}", runtime=_RUNTIME))

    def _returned_probabilities(self, probs: np.ndarray):
        import tensorflow as tf

        return tf.convert_to_tensor(probs)
