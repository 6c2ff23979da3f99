"""CAM methods, selectable by name in Explainer.explain(methods=...)."""

from .base import METHODS, CamMethod, InputBatch, InputMethod, LayerBatch, get_method
from .eigen import KPCACAM, EigenCAM, SegEigenCAM
from .gradient import (
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ShapleyCAM,
    XGradCAM,
)
from .perturbation import AblationCAM, ScoreCAM
from .statistics import FEM, RandomCAM

__all__ = [
    "FEM", "KPCACAM", "METHODS", "AblationCAM", "CamMethod", "EigenCAM", "EigenGradCAM",
    "GradCAM", "GradCAMElementWise", "GradCAMPlusPlus", "HiResCAM", "InputBatch", "InputMethod",
    "LayerBatch", "LayerCAM", "RandomCAM", "ScoreCAM", "SegEigenCAM", "ShapleyCAM",
    "XGradCAM", "get_method",
]
