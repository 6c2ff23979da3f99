"""Detection graphs ending in NonMaxSuppression: what is explained is the scores it reads."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import onnx_graphsurgeon as gs


@dataclass(frozen=True)
class NmsBoxes:
    """The candidate boxes a NonMaxSuppression reads: (N, boxes, 4) in `box_format`."""

    tensor: str
    box_format: str  # "yxyx" (ONNX's default, center_point_box=0) or "cxcywh"


def before_nms(graph: gs.Graph, output: str) -> tuple[str, NmsBoxes | None]:
    """The tensor to score instead of `output` when `output` comes after a NonMaxSuppression
    (which selects boxes, has no gradient and is left out of the differentiated part), with
    the boxes it reads; `output` itself and None otherwise.

    The scores NMS reads are (N, classes, boxes); when a Transpose made them from
    (N, boxes, classes), that tensor is scored instead (Detection layout "detr").
    """
    nms = _nms_above(graph.tensors()[output])
    if nms is None:
        return output, None
    scores = nms.inputs[1]
    producer = scores.inputs[0] if scores.inputs else None
    layout = "detr_t"
    if producer is not None and producer.op == "Transpose" and list(
            producer.attrs.get("perm", [])) == [0, 2, 1]:
        scores, layout = producer.inputs[0], "detr"
    box_format = "cxcywh" if nms.attrs.get("center_point_box", 0) else "yxyx"
    warnings.warn(
        f"Output {output!r} comes after NonMaxSuppression node {nms.name!r}, which selects "
        f"boxes and has no gradient: onnx-cam explains the scores it reads, {scores.name!r} "
        f"of shape {scores.shape}. Give targets=onnx_cam.Detection(box=..., cls=..., "
        f"layout={layout!r}) (box: a candidate's index, or coordinates matched against the "
        f"boxes it reads, {nms.inputs[0].name!r}).", UserWarning, stacklevel=4)
    return scores.name, NmsBoxes(nms.inputs[0].name, box_format)


def _nms_above(tensor: gs.Variable) -> gs.Node | None:
    """The NonMaxSuppression node `tensor` is computed from, if any (the nearest one)."""
    seen, stack = set(), [tensor]
    while stack:
        current = stack.pop()
        if current.name in seen:
            continue
        seen.add(current.name)
        for node in current.inputs:
            if node.op == "NonMaxSuppression":
                return node
            stack.extend(node.inputs)
    return None
