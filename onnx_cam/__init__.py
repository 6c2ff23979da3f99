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


def compare(*args, **kwargs):
    """Every method x metric over a dataset, for one or several models: a table and an HTML
    page. See onnx_cam.comparison.compare (imported on first use: it needs the audit extra)."""
    from .comparison import compare as run
    return run(*args, **kwargs)


__all__ = [
    "Explainer", "Explanation", "Finer", "Segmentation", "Detection", "RuntimeOptions",
    "OnnxCamError", "ModelLoadError",
    "UnsupportedModelError", "UnsupportedOpError", "LayerError", "InputError", "TargetError",
    "MethodError", "StoreError", "MemoryBudgetError", "RowFlag", "describe_flags",
    "NumericsWarning", "ZeroGradientWarning", "compare", "__version__",
]
