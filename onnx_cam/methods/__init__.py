"""CAM methods, selectable by name in Explainer.explain(methods=...)."""

from .base import METHODS, CamMethod, InputBatch, InputMethod, LayerBatch, get_method
from .eigen import EigenCAM
from .gradient import (
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)
from .perturbation import AblationCAM, ScoreCAM

__all__ = [
    "METHODS", "AblationCAM", "CamMethod", "EigenCAM", "EigenGradCAM", "GradCAM",
    "GradCAMElementWise", "GradCAMPlusPlus", "HiResCAM", "InputBatch", "InputMethod",
    "LayerBatch", "LayerCAM", "ScoreCAM", "XGradCAM", "get_method",
]
