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
from .occlusion import Occlusion
from .perturbation import AblationCAM, ReciproCAM, ScoreCAM
from .rise import RISE
from .surrogate import LIME, KernelSHAP

__all__ = [
    "LIME", "METHODS", "RISE", "AblationCAM", "CamMethod", "EigenCAM", "EigenGradCAM",
    "GradCAM", "GradCAMElementWise", "GradCAMPlusPlus", "HiResCAM", "InputBatch", "InputMethod",
    "KernelSHAP", "LayerBatch", "LayerCAM", "Occlusion", "ReciproCAM", "ScoreCAM", "XGradCAM",
    "get_method",
]
