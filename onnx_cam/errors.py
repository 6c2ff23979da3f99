"""The errors a user can cause. Each message says what was wrong and what to do."""


class OnnxCamError(Exception):
    """Base class of every error onnx-cam raises on purpose."""


class ModelLoadError(OnnxCamError):
    """The model file or object cannot be read as a valid ONNX model."""


class UnsupportedModelError(OnnxCamError):
    """The model is valid ONNX but onnx-cam cannot explain it as it is."""


class UnsupportedOpError(UnsupportedModelError):
    """An op on the path from a target layer to the score has no gradient rule."""


class LayerError(OnnxCamError):
    """A requested layer does not exist or cannot be explained."""


class InputError(OnnxCamError):
    """The input array does not fit the model (shape, dtype, NaN / Inf)."""


class TargetError(OnnxCamError):
    """A target or foil is out of range or unknown."""


class MethodError(OnnxCamError):
    """An unknown CAM method was requested."""


class StoreError(OnnxCamError):
    """An audit store cannot be written or read as asked (another job's, locked, ...)."""


class MemoryBudgetError(OnnxCamError):
    """The work asked for would not fit the memory budget (max_memory / ONNX_CAM_MAX_MEMORY)."""
