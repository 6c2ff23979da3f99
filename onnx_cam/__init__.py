"""onnx-cam: class-activation maps for CNNs, computed on the model's ONNX graph."""

from .dense import Detection, Segmentation
from .errors import (
    InputError,
    LayerError,
    MemoryBudgetError,
    MethodError,
    ModelLoadError,
    OnnxCamError,
    StoreError,
    TargetError,
    UnsupportedModelError,
    UnsupportedOpError,
)
from .explainer import Explainer
from .explanation import Explanation
from .numerics import NumericsWarning, RowFlag, ZeroGradientWarning, describe_flags
from .runtime import RuntimeOptions
from .targets import Finer

__version__ = "0.1.0"

__all__ = [
    "Explainer", "Explanation", "Finer", "Segmentation", "Detection", "RuntimeOptions",
    "OnnxCamError", "ModelLoadError",
    "UnsupportedModelError", "UnsupportedOpError", "LayerError", "InputError", "TargetError",
    "MethodError", "StoreError", "MemoryBudgetError", "RowFlag", "describe_flags",
    "NumericsWarning", "ZeroGradientWarning", "__version__",
]
