"""Converters from training frameworks to ONNX models annotated for onnx-cam.

Framework imports (torch, ...) happen inside the converter functions, so importing this
package needs only onnx.
"""

from .torch_export import CLASS_NAMES_KEY, LAYER_MAP_KEY, export_torch

__all__ = ["CLASS_NAMES_KEY", "LAYER_MAP_KEY", "export_torch"]
