"""CAMs from a principal component of the activations (or of gradient x activation)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse.linalg import eigsh

from ..errors import MethodError
from .base import CamMethod, LayerBatch, first_component

# positions above which the kernel matrix's top eigenpair is found by Lanczos iteration
_DENSE_LIMIT = 512
_KERNELS = ("sigmoid", "rbf", "poly", "cosine", "linear")


class EigenCAM(CamMethod):
    """Muhammad & Yeasin, IJCNN 2020. Class-agnostic: the same map for every target."""

    name = "eigencam"
    aliases = ("eigen-cam",)
    uses_gradients = False
    uses_target = False

    def raw(self, batch: LayerBatch, eigen_smooth: bool = False) -> np.ndarray:
        return np.maximum(first_component(batch.activations), 0)


class SegEigenCAM(CamMethod):
    """Chung & Ying, Appl. Sci. 2025: first principal component of |gradient| x activation,
    its sign chosen so that the larger of |min| and |max| is the maximum (their eq. 13)."""

    name = "segeigencam"
    aliases = ("seg-eigen-cam",)

    def raw(self, batch: LayerBatch, eigen_smooth: bool = False) -> np.ndarray:
        maps = first_component(np.abs(batch.gradients) * batch.activations)
        flat = maps.reshape(len(maps), -1)
        flip = np.abs(flat.min(axis=1)) > np.abs(flat.max(axis=1))
        maps[flip] *= -1
        return np.maximum(maps, 0)


@dataclass
class KPCACAM(CamMethod):
    """Karmani et al., 2024: the first kernel principal component of the activations
    (positions as samples, channels centred), as pytorch-grad-cam's KPCA_CAM with scikit-learn's
    KernelPCA defaults: sigmoid kernel tanh(gamma <a, b> + coef0), gamma = 1 / channels.
    Oriented like EigenCAM: positively correlated with the channel sum."""

    name = "kpcacam"
    aliases = ("kpca-cam",)
    uses_gradients = False
    uses_target = False
    kernel: str = "sigmoid"          # one of _KERNELS
    gamma: float | None = None
    coef0: float = 1.0
    degree: int = 3

    def __post_init__(self):
        if self.kernel not in _KERNELS:
            raise MethodError(f"KPCACAM(kernel={self.kernel!r}): the kernel is one of "
                              f"{', '.join(_KERNELS)}.")

    def raw(self, batch: LayerBatch, eigen_smooth: bool = False) -> np.ndarray:
        acts = np.nan_to_num(batch.activations).astype(np.float64)
        n, c = acts.shape[:2]
        out = np.empty((n, acts[0, 0].size), np.float32)
        for i, item in enumerate(acts.reshape(n, c, -1)):
            x = item.T - item.T.mean(axis=0)
            projection = _top_component(_centred(self._kernel(x)))
            out[i] = -projection if projection @ x.sum(axis=1) < 0 else projection
        return np.maximum(out, 0).reshape((n, *acts.shape[2:]))

    def _kernel(self, x: np.ndarray) -> np.ndarray:
        gamma = 1.0 / x.shape[1] if self.gamma is None else self.gamma
        gram = x @ x.T
        if self.kernel == "sigmoid":
            return np.tanh(gamma * gram + self.coef0)
        if self.kernel == "poly":
            return (gamma * gram + self.coef0) ** self.degree
        if self.kernel == "linear":
            return gram
        if self.kernel == "cosine":
            norms = np.linalg.norm(x, axis=1)
            norms[norms == 0] = 1
            return gram / np.outer(norms, norms)
        squared = np.diag(gram)  # rbf
        return np.exp(-gamma * np.maximum(squared[:, None] + squared[None] - 2 * gram, 0))


def _centred(k: np.ndarray) -> np.ndarray:
    """The kernel matrix of the features centred in feature space."""
    rows = k.mean(axis=0, keepdims=True)
    return k - rows - rows.T + k.mean()


def _top_component(k: np.ndarray) -> np.ndarray:
    """The samples' coordinates on the top kernel principal axis: v sqrt(lambda)."""
    if len(k) > _DENSE_LIMIT:
        values, vectors = eigsh(k, k=1, which="LA")
    else:
        values, vectors = np.linalg.eigh(k)
    return vectors[:, -1] * np.sqrt(max(values[-1], 0.0))
