"""TorchCamBuilder: SignalGrad-CAM's PyTorch builder on onnx-cam."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import LayerError
from ..explainer import Explainer
from ..runtime import CPU, RuntimeOptions
from .builder import CamBuilder
from .cache import export_cache
from .fingerprint import torch_fingerprint

_RANK = re.compile(r"([123])d$", re.IGNORECASE)  # Conv1d, BatchNorm2d, MaxPool3d, ...
_PREFIX = "model."


class TorchCamBuilder(CamBuilder):
    """SignalGrad-CAM 2.2's ``TorchCamBuilder`` (same arguments; see :class:`CamBuilder`).

    The module is exported to ONNX (``onnx_cam.converters.export_torch``) on the first
    ``get_cam`` call for each input shape (and kept in :mod:`.cache` for every builder of
    the same weights and architecture), inside a thin wrapper that picks the explained
    output (``model_output_index``; a transformer's ``logits[:, -1, :]``) and, when the
    model takes no channel axis, drops the unit one onnx-cam adds. ``target_layers`` are
    module names (``model.named_modules()``): convolutions as in SignalGrad-CAM, and any
    other module onnx-cam can explain. ``use_gpu`` runs ONNX Runtime on CUDA when
    onnxruntime-gpu offers it. The module is not modified (not even put in eval mode: the
    export runs it in eval mode and restores its flags). Integer items are token ids: the
    module takes them as (N, T) (an embedding first), and the maps cover token positions.
    """

    def __init__(self, model, transform_fn: Callable | None = None,
                 class_names: Sequence[str] | None = None, time_axs: int = 1,
                 input_transposed: bool = False, ignore_channel_dim: bool = False,
                 is_regression_network: bool = False, is_transformer_network: bool = False,
                 model_output_index: int | None = None, extend_search: bool = False,
                 use_gpu: bool = False, padding_dim: int | None = None, seed: int = 11):
        import torch

        if not isinstance(model, torch.nn.Module):
            raise LayerError(f"TorchCamBuilder needs a torch.nn.Module, got "
                             f"{type(model).__name__}; for objects holding layers as "
                             "attributes, wrap them in a Module whose forward runs the model.")
        super().__init__(model, transform_fn, class_names, time_axs, input_transposed,
                         ignore_channel_dim, is_regression_network, is_transformer_network,
                         model_output_index, extend_search, padding_dim, seed)
        self.use_gpu = use_gpu
        self._runtime = RuntimeOptions() if use_gpu else RuntimeOptions(providers=(CPU,))

    def _layer_rank(self, layer: str) -> int:
        modules = dict(self.model.named_modules())
        if layer not in modules:
            convs = [n for n, m in modules.items() if "conv" in type(m).__name__.lower()]
            raise LayerError(f"target layer {layer!r} is not a module of the model; its "
                             f"convolutions are {convs[:12]} (names from named_modules()).")
        for module in (modules[layer], *modules.values()):  # the layer's rank, else the model's
            found = _RANK.search(type(module).__name__)
            if found:
                return int(found.group(1))
        raise LayerError(f"Cannot tell whether layer {layer!r} is 1D, 2D or 3D: the model has "
                         "no Conv1d / Conv2d / Conv3d module.")

    def _core_layer(self, layer: str) -> str:
        return _PREFIX + layer

    def _fingerprint(self) -> tuple:
        return torch_fingerprint(self.model)

    def _explainer(self, model_key: tuple, shape: tuple[int, ...], example: np.ndarray,
                   unit_channel: bool) -> Explainer:
        dtype = np.int64 if example.dtype.kind in "iu" else np.float32  # token ids
        key = (model_key, shape, np.dtype(dtype).str, unit_channel, self.model_output_index,
               self.is_transformer_network, self._runtime)

        def export() -> Explainer:
            import torch

            wrapped = _adapter_class()(self.model, unit_channel, self.model_output_index,
                                       self.is_transformer_network)
            return Explainer(wrapped, example_input=torch.from_numpy(
                np.ascontiguousarray(example[:1], dtype=dtype)), runtime=self._runtime)

        return export_cache.get(key, export)


@functools.cache
def _adapter_class() -> type:
    """The wrapper module's class, made on first use so that importing the facade does not
    import torch."""
    import torch

    class Adapter(torch.nn.Module):
        """The model as onnx-cam explains it: one (N, C, *spatial) input, one score output.

        Its only child is ``model``, so the user's module names are ``model.<name>``.
        """

        def __init__(self, model, unit_channel: bool, output_index: int | None,
                     transformer: bool):
            super().__init__()
            self.model = model
            self.unit_channel = unit_channel
            self.output_index = output_index
            self.transformer = transformer

        def forward(self, x):
            out = self.model(x[:, 0] if self.unit_channel else x)
            if self.transformer and hasattr(out, "logits"):
                return out.logits[:, -1, :]
            if isinstance(out, (tuple, list)):
                return out[self.output_index or 0]
            return out

    return Adapter
