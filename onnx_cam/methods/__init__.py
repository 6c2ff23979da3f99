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
from .eigen import KPCACAM, EigenCAM, SegEigenCAM
from .fullgrad import FullGrad
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
from .guided import Deconvolution, GuidedBackprop, GuidedGradCAM
from .occlusion import Occlusion
from .perturbation import ISCAM, SSCAM, AblationCAM, ReciproCAM, ScoreCAM
from .rise import RISE
from .rollout import AttentionRollout, GradientRollout
from .sess import SESS
from .statistics import FEM, RandomCAM
from .surrogate import LIME, KernelSHAP

__all__ = [
    "FEM", "ISCAM", "KPCACAM", "LIME", "METHODS", "RISE", "SESS", "SSCAM", "AblationCAM",
    "AttentionRollout", "GradientRollout",
    "CamMethod", "Deconvolution", "EigenCAM", "EigenGradCAM", "FullGrad", "GradCAM",
    "GradCAMElementWise", "GradCAMPlusPlus", "GuidedBackprop", "GuidedGradCAM", "HiResCAM",
    "InputBatch", "InputMethod", "InputXGradient", "IntegratedGradients", "KernelSHAP",
    "LayerBatch", "LayerCAM", "Occlusion", "RandomCAM", "ReciproCAM", "Saliency", "ScoreCAM",
    "SegEigenCAM", "ShapleyCAM", "SmoothGrad", "SmoothGradCAMPlusPlus", "SmoothGradSquared",
    "VarGrad", "XGradCAM", "get_method",
]
