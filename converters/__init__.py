"""Converters from training frameworks to ONNX models annotated for onnx-cam.

Framework imports (torch, tensorflow, keras, tf2onnx) happen inside the converter functions,
so importing this package needs only onnx.
"""

from .keras_export import export_keras
from .metadata import CLASS_NAMES_KEY, LAYER_MAP_KEY, LAYOUT_KEY, SOURCE_KEY
from .torch_export import export_torch

__all__ = ["CLASS_NAMES_KEY", "LAYER_MAP_KEY", "LAYOUT_KEY", "SOURCE_KEY", "export_keras",
           "export_torch"]
