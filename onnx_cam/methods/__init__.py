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
    SmoothGradCAMPlusPlus,
    XGradCAM,
)
from .occlusion import Occlusion
from .perturbation import ISCAM, SSCAM, AblationCAM, ReciproCAM, ScoreCAM
from .rise import RISE
from .sess import SESS
from .statistics import FEM, RandomCAM
from .surrogate import LIME, KernelSHAP

__all__ = [
    "FEM", "ISCAM", "KPCACAM", "LIME", "METHODS", "RISE", "SESS", "SSCAM", "AblationCAM",
    "CamMethod", "EigenCAM", "EigenGradCAM", "GradCAM", "GradCAMElementWise", "GradCAMPlusPlus",
    "HiResCAM", "InputBatch", "InputMethod", "KernelSHAP", "LayerBatch", "LayerCAM",
    "Occlusion", "RandomCAM", "ReciproCAM", "ScoreCAM", "SegEigenCAM", "ShapleyCAM",
    "SmoothGradCAMPlusPlus", "XGradCAM", "get_method",
]
