"""A drop-in for SignalGrad-CAM 2.2 (``signal_grad_cam``), computed by onnx-cam.

>>> from onnx_cam.compat import TorchCamBuilder        # was: from signal_grad_cam import ...
>>> builder = TorchCamBuilder(model, class_names=["normal", "af"], time_axs=1)
>>> cams, probs, ranges = builder.get_cam(signals, data_labels=labels, target_classes=[0, 1],
...                                       explainer_types="Grad-CAM", target_layers="conv3",
...                                       softmax_final=True)
>>> builder.single_channel_output_display(signals, labels, probs, cams, "Grad-CAM", [0, 1],
...                                       "conv3", bar_ranges_dict=ranges)   # -> [Figure]

The same constructor and method arguments and the same three dictionaries, keyed as
SignalGrad-CAM keys them. The model is converted to ONNX once and every batch of items is
explained in one ONNX Runtime run; figures are drawn only when asked (``onnx_cam.viz``),
returned, saved under ``results_dir_path`` when given, and never left open. Importing this
package imports neither torch nor TensorFlow.
"""

from .builder import CamBuilder
from .tf_builder import TfCamBuilder
from .torch_builder import TorchCamBuilder

__all__ = ["CamBuilder", "TfCamBuilder", "TorchCamBuilder"]
