"""Figure titles from an Explanation row: what is explained, the prediction, the truth."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from ..explanation import Explanation
from ..methods import get_method

_METHOD_TITLES = {
    "gradcam": "Grad-CAM", "hirescam": "HiResCAM", "gradcam++": "Grad-CAM++",
    "xgradcam": "XGrad-CAM", "layercam": "LayerCAM",
    "gradcamelementwise": "Grad-CAM (element-wise)",
    "eigencam": "Eigen-CAM", "eigengradcam": "EigenGrad-CAM", "scorecam": "Score-CAM",
    "ablationcam": "Ablation-CAM", "shapleycam": "ShapleyCAM", "kpcacam": "KPCA-CAM",
    "fem": "FEM", "segeigencam": "Seg-Eigen-CAM", "randomcam": "RandomCAM", "sscam": "SS-CAM",
    "iscam": "IS-CAM", "smoothgradcam++": "Smooth Grad-CAM++", "reciprocam": "ReciproCAM",
    "sess": "SESS", "saliency": "Saliency", "input_x_gradient": "Input x Gradient",
    "integrated_gradients": "Integrated Gradients", "smoothgrad": "SmoothGrad",
    "smoothgrad_sq": "SmoothGrad-squared", "vargrad": "VarGrad",
    "guided_backprop": "Guided Backprop", "deconvolution": "Deconvolution",
    "guided_gradcam": "Guided Grad-CAM", "fullgrad": "FullGrad", "occlusion": "Occlusion",
    "rise": "RISE", "lime": "LIME", "kernelshap": "KernelSHAP",
    "attention_rollout": "Attention Rollout", "gradient_rollout": "Gradient Rollout",
}


def method_title(method: str) -> str:
    """The published name of a CAM method ("gradcam" -> "Grad-CAM")."""
    name = get_method(method).name
    return _METHOD_TITLES.get(name, name)


def class_label(k: int, class_names: Sequence[str] | None) -> str:
    return str(class_names[k]) if class_names is not None else f"class {k}"


def row_title(explanation: Explanation, row: int, *, true_label: int | str | None = None,
              class_names: Sequence[str] | None = None) -> str:
    """``"af (p=0.93) · pred af · true normal"``; contrastive rows read ``"af vs normal
    (p=0.93 vs 0.05) · ..."``; a single-output regression row reads ``"output 0 = 1.23"``.

    ``true_label`` is a class index or name; ``class_names`` overrides the explanation's.
    """
    names = class_names if class_names is not None else explanation.class_names
    target = int(explanation.targets[row])
    probs, logits = explanation.probs[row], explanation.logits[row]
    if logits.ndim > 1:  # a segmentation / detection row: a class over a mask or of a box
        return class_label(target, names)
    if logits.shape[0] == 1 and names is None:  # one output: a regression
        return f"output {target} = {float(logits[target]):.3g}"
    foil = None if explanation.foils is None else int(explanation.foils[row])
    if foil is None:
        head = f"{class_label(target, names)} (p={probs[target]:.2f})"
    else:
        head = (f"{class_label(target, names)} vs {class_label(foil, names)} "
                f"(p={probs[target]:.2f} vs {probs[foil]:.2f})")
    parts = [head, f"pred {class_label(int(explanation.predicted[row]), names)}"]
    if true_label is not None:
        true = true_label if isinstance(true_label, str) else class_label(int(true_label), names)
        parts.append(f"true {true}")
    return " · ".join(parts)


def map_title(method: str, layer: str) -> str:
    """``"Grad-CAM · layer4"``: which map a figure shows."""
    return f"{method_title(method)} · {layer}"


def file_stem(explanation: Explanation | None, row: int, item: int, method: str | None,
              layer: str | None) -> str:
    """A file name for one row: ``item003_af_vs_normal_gradcam_layer4``, filesystem-safe."""
    parts = [f"item{item:03d}"]
    if explanation is not None:
        names = explanation.class_names
        parts.append(class_label(int(explanation.targets[row]), names))
        if explanation.foils is not None:
            parts += ["vs", class_label(int(explanation.foils[row]), names)]
    parts += [p for p in (method, layer) if p is not None]
    stem = "_".join(parts)
    return "".join(c if c.isalnum() or c in "-_.+" else "-" for c in stem).strip(".")


def as_labels(true_labels, n: int) -> list:
    """One true label (or None) per input item."""
    if true_labels is None:
        return [None] * n
    labels = list(np.asarray(true_labels, dtype=object).reshape(-1))
    if len(labels) != n:
        raise InputError(f"{len(labels)} true_labels for {n} input items: give one per item.")
    return labels
