"""CAM methods, selectable by name in Explainer.explain(methods=...)."""

from .base import METHODS, CamMethod, get_method
from .gradient import GradCAM, HiResCAM

__all__ = ["METHODS", "CamMethod", "GradCAM", "HiResCAM", "get_method"]
