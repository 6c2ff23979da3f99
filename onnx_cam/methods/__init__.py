"""CAM methods, selectable by name in Explainer.explain(methods=...)."""

from .attribution import (
    InputXGradient,
    IntegratedGradients,
    Saliency,
    SmoothGrad,
    SmoothGradSquared,
    VarGrad,
)
from .base import METHODS, CamMethod, InputBatch, InputMethod, LayerBatch, get_method
from .eigen import EigenCAM
from .fullgrad import FullGrad
from .gradient import (
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)
from .guided import Deconvolution, GuidedBackprop, GuidedGradCAM
from .perturbation import AblationCAM, ScoreCAM

__all__ = [
    "METHODS", "AblationCAM", "CamMethod", "Deconvolution", "EigenCAM", "EigenGradCAM",
    "FullGrad", "GradCAM", "GradCAMElementWise", "GradCAMPlusPlus", "GuidedBackprop",
    "GuidedGradCAM", "HiResCAM", "InputBatch", "InputMethod", "InputXGradient",
    "IntegratedGradients", "LayerBatch", "LayerCAM", "Saliency", "ScoreCAM", "SmoothGrad",
    "SmoothGradSquared", "VarGrad", "XGradCAM", "get_method",
]
