"""Converters from training frameworks to ONNX models annotated for onnx-cam.

Framework imports (torch, ...) happen inside the converter functions, so importing this
package needs only onnx.
"""

from .torch_export import LAYER_MAP_KEY, export_torch

__all__ = ["LAYER_MAP_KEY", "export_torch"]
