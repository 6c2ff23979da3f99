"""Targets on dense outputs: a class over a mask of a segmentation, a box and class of a
detector. Each row's score is a function of the model's output; its gradient at any layer
is the output's gradient seeded with d score / d output, which is what each row's seed holds
(the output is flattened to (N, F) in the rewritten graph, the seed likewise)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import MethodError, TargetError


@dataclass(frozen=True)
class DenseOutput:
    """What a dense target needs to know of the model's output for the items explained."""

    shape: tuple                          # the output's shape after the batch axis
    items: int                            # the number of input items
    class_names: Sequence[str] | None
    channels_last: bool                   # the model's layout: a segmentation's default axis
    values: Callable[[], np.ndarray]      # (items, *shape), computed once when first asked
    tensor: Callable[[str], np.ndarray]   # the values of another tensor of the graph, (items, ...)
    nms_boxes: object = None              # onnx_cam.graph.nms.NmsBoxes, when cut before NMS

    def resolve(self, value, classes: int, item: int) -> int:
        if isinstance(value, str):
            names = self.class_names
            if names is None or value not in names:
                hint = ("Give class_names= to the Explainer." if names is None
                        else f"Known classes: {list(names)}.")
                raise TargetError(f"Unknown class name {value!r} for item {item}. {hint}")
            index = list(names).index(value)
            if index >= classes:
                raise TargetError(f"Class {value!r} is number {index} of class_names, but the "
                                  f"output scores {classes} classes.")
            return index
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if not 0 <= value < classes:
                raise TargetError(f"Class {value} of item {item} is out of range: the output "
                                  f"scores classes 0..{classes - 1}.")
            return int(value)
        raise TargetError(f"The class of item {item} is {value!r}; give a class index or name.")


@dataclass(frozen=True, eq=False)
class Segmentation:
    """Explain class `cls` over a mask of a segmentation output (pytorch-grad-cam's
    SemanticSegmentationTarget): the score is sum(mask * output[cls]) over the output's
    spatial axes, 1D, 2D or 3D.

    mask: bool or float weights shaped like the output's spatial axes (the same for every
    item), or (N, *spatial) for N items; None: where `cls` is the predicted class (arg-max
    over the class axis), per item. class_axis: the output's class axis, batch axis = 0;
    None: 1, or the last axis for a channels-last model.
    """

    cls: int | str
    mask: np.ndarray | None = None
    class_axis: int | None = None

    nonlinear = False

    def _axis(self, out: DenseOutput) -> int:
        rank = len(out.shape) + 1
        axis = self.class_axis if self.class_axis is not None else (
            rank - 1 if out.channels_last else 1)
        if not -rank < axis < rank or axis % rank == 0:
            raise TargetError(f"class_axis={axis} is not an axis of the output (N, "
                              f"{', '.join(map(str, out.shape))}) other than the batch axis.")
        return axis % rank - 1  # in an item's values

    def row(self, out: DenseOutput, item: int) -> tuple[int, np.ndarray]:
        axis = self._axis(out)
        classes = out.shape[axis]
        spatial = out.shape[:axis] + out.shape[axis + 1:]
        cls = out.resolve(self.cls, classes, item)
        if self.mask is None:
            mask = np.argmax(out.values()[item], axis=axis) == cls
            if not mask.any():
                raise TargetError(f"Class {self.cls!r} is predicted nowhere in item {item}, so "
                                  "its default mask is empty; give mask= (where to explain it).")
        else:
            mask = np.asarray(self.mask)
            if mask.shape == (out.items, *spatial):
                mask = mask[item]
            elif mask.shape != spatial:
                raise TargetError(
                    f"The mask of Segmentation({self.cls!r}) is shaped {mask.shape}; the output "
                    f"(N, {', '.join(map(str, out.shape))}) with classes on axis {axis + 1} needs "
                    f"a mask shaped like its spatial axes {spatial} (or {(out.items, *spatial)}"
                    " for every item). Resize the mask to the output's size, or set class_axis=.")
            if mask.dtype.kind not in "biuf" or not np.isfinite(mask).all() or not mask.any():
                raise TargetError(f"The mask of Segmentation({self.cls!r}) for item {item} "
                                  "must be finite bool or number weights, not all zero.")
        seed = np.zeros(out.shape, np.float32)
        np.moveaxis(seed, axis, 0)[cls] = mask
        return cls, seed.reshape(-1)

    def predicted(self, out: DenseOutput, values: np.ndarray) -> np.ndarray:
        """Each row's predicted class per position, (rows, *spatial)."""
        return np.argmax(values, axis=self._axis(out) + 1)


# layout -> (boxes on the output's last axis, coordinates in the output)
LAYOUTS = {"yolo": (False, True), "yolo_t": (True, True),
           "detr": (False, False), "detr_t": (True, False)}
BOX_FORMATS = ("cxcywh", "xyxy", "yxyx")


@dataclass(frozen=True, eq=False)
class Detection:
    """Explain class `cls` of one box of a detector's raw output (before any non-maximum
    suppression): the score is that box's class score, times its objectness when
    `objectness` (YOLOv5's confidence).

    box: the box's index among the output's candidates, or its corners (x1, y1, x2, y2): of
    the candidates whose IoU with them exceeds `iou_threshold`, the one scoring `cls` highest
    (the one NMS keeps). cls: None = the box's best class.
    layout: "yolo" (N, boxes, 4 [+ 1] + classes), "yolo_t" (N, 4 [+ 1] + classes, boxes),
    "detr" (N, boxes, classes), "detr_t" (N, classes, boxes): coordinates are then read from
    the tensor or output named `boxes` ((N, boxes, 4); default: the boxes a
    NonMaxSuppression the model was cut before reads). objectness: the yolo output holds an
    objectness field after the 4 coordinates. box_format: how the candidates' coordinates
    are written; None = "cxcywh", or the NonMaxSuppression's own.
    """

    box: int | Sequence[float]
    cls: int | str | None = None
    layout: str = "yolo"
    objectness: bool = False
    box_format: str | None = None
    boxes: str | None = None
    iou_threshold: float = 0.5

    @property
    def nonlinear(self) -> bool:
        return self.objectness  # objectness x class score: its seed depends on the values

    def _fields(self, out: DenseOutput) -> tuple[bool, int]:
        if self.layout not in LAYOUTS:
            raise TargetError(f"Detection layout={self.layout!r} is not one of {list(LAYOUTS)}.")
        if len(out.shape) != 2:
            raise TargetError(f"The output (N, {', '.join(map(str, out.shape))}) is not a "
                              f"detector's (N, boxes, fields) for layout {self.layout!r}; choose "
                              "the output holding the boxes' scores with output=.")
        transposed, coordinates = LAYOUTS[self.layout]
        if self.objectness and not coordinates:
            raise TargetError("objectness=True is for yolo layouts (an objectness field after "
                              "the 4 coordinates); a detr layout holds class scores only.")
        first = (4 + self.objectness) if coordinates else 0
        fields = out.shape[0 if transposed else 1]
        if fields <= first:
            raise TargetError(f"Layout {self.layout!r} (objectness={self.objectness}) needs "
                              f"more than {first} fields per box; the output has {fields}.")
        return transposed, first

    def row(self, out: DenseOutput, item: int) -> tuple[int, np.ndarray]:
        transposed, first = self._fields(out)
        classes = (out.shape[0] if transposed else out.shape[1]) - first
        count = out.shape[1] if transposed else out.shape[0]
        cls = None if self.cls is None else out.resolve(self.cls, classes, item)
        needs_values = self.objectness or cls is None or not _is_index(self.box)
        table = None
        if needs_values:
            table = out.values()[item].astype(np.float64)
            table = table.T if transposed else table      # (boxes, fields)
        if _is_index(self.box):
            box = int(self.box)
            if not 0 <= box < count:
                raise TargetError(f"Box {box} of item {item} is out of range: the output "
                                  f"holds {count} candidate boxes (0..{count - 1}).")
        else:
            box = self._match(out, item, table, first, cls)
        if cls is None:
            cls = int(np.argmax(table[box, first:]))
        seed = np.zeros((count, first + classes), np.float32)
        if self.objectness:  # d (obj * p) = p d obj + obj d p
            seed[box, 4] = table[box, first + cls]
            seed[box, first + cls] = table[box, 4]
        else:
            seed[box, first + cls] = 1.0
        return cls, (seed.T if transposed else seed).reshape(-1)

    def _match(self, out: DenseOutput, item: int, table, first: int, cls: int | None) -> int:
        corners = np.asarray(self.box, np.float64).reshape(-1)
        if corners.shape != (4,) or not np.isfinite(corners).all():
            raise TargetError(f"Detection box={self.box!r}: give a candidate's index or its "
                              "corners (x1, y1, x2, y2).")
        box_format = self.box_format
        if first:
            coordinates = table[:, :4]
        else:
            source = self.boxes or getattr(out.nms_boxes, "tensor", None)
            if source is None:
                raise TargetError(f"Layout {self.layout!r} holds no coordinates: give box as an "
                                  "index, or boxes= naming the output that holds the boxes "
                                  "(N, boxes, 4).")
            coordinates = np.asarray(out.tensor(source)[item], np.float64).reshape(-1, 4)
            if self.boxes is None and box_format is None:
                box_format = out.nms_boxes.box_format
            if len(coordinates) != len(table):
                raise TargetError(f"{source!r} holds {len(coordinates)} boxes per item; the "
                                  f"scores hold {len(table)}.")
        box_format = box_format or "cxcywh"
        if box_format not in BOX_FORMATS:
            raise TargetError(f"box_format={box_format!r} is not one of {BOX_FORMATS}.")
        ious = _iou(corners, _corners(coordinates, box_format))
        near = np.flatnonzero(ious > self.iou_threshold)
        if not len(near):
            raise TargetError(f"No candidate box of item {item} overlaps {corners.tolist()} "
                              f"with IoU > {self.iou_threshold} (best: {ious.max():.3f}); check "
                              "box_format and that the corners are in the model's coordinates.")
        scores = table[near, first:] if cls is None else table[near, first + cls:first + cls + 1]
        if self.objectness:
            scores = scores * table[near, 4:5]
        return int(near[np.argmax(scores.max(axis=1))])

    def predicted(self, out: DenseOutput, values: np.ndarray) -> np.ndarray:
        """Each row's best class per candidate box, (rows, boxes)."""
        transposed, first = self._fields(out)
        return np.argmax(values[:, first:] if transposed else values[..., first:],
                         axis=1 if transposed else 2)


def _is_index(box) -> bool:
    return isinstance(box, (int, np.integer)) and not isinstance(box, bool)


def _corners(boxes: np.ndarray, box_format: str) -> np.ndarray:
    """(m, 4) boxes as (x1, y1, x2, y2)."""
    if box_format == "xyxy":
        return boxes
    if box_format == "yxyx":
        return boxes[:, [1, 0, 3, 2]]
    half = boxes[:, 2:] / 2
    return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    low = np.maximum(box[:2], np.minimum(boxes[:, :2], boxes[:, 2:]))
    high = np.minimum(box[2:], np.maximum(boxes[:, :2], boxes[:, 2:]))
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    area = np.prod(np.abs(boxes[:, 2:] - boxes[:, :2]), axis=1)
    union = np.prod(box[2:] - box[:2]) + area - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def check_dense(model, targets, score: str, methods: list, aug_smooth: bool = False) -> None:
    """Refuse what is not defined on a dense output (segmentation, detection) or on a score
    that is not linear in it (objectness x class score)."""
    if model.dense:
        shape = f"(N, {', '.join(map(str, model.score_shape))})"
        if score != "logits" and (model.head != "Sigmoid" or score == "rest"):
            raise TargetError(f"The model's output {shape} is dense: its score is a sum of "
                              "output values, so score='logits' only (also 'probs' and "
                              f"'log_probs' under a final Sigmoid), not {score!r}.")
        if aug_smooth or any(m.level == "meta" for m in methods):
            raise MethodError("aug_smooth and sess explain flipped, rescaled or cropped inputs, "
                              "which a mask or box over the output does not follow; explain "
                              f"the model's dense output {shape} without them.")
        if targets is None and any(m.uses_gradients or m.uses_target for m in methods):
            raise TargetError(
                f"The model's output {shape} is not (N, classes): say what is explained with "
                "targets=onnx_cam.Segmentation(cls, mask=None) or onnx_cam.Detection(box=..., "
                "cls=..., layout=...) (targets=None is for eigencam, kpcacam, fem, randomcam).")
    nonlinear = [m.name for m in methods if m.uses_target and (
        m.level != "layer" or not m.uses_gradients or m.scales_input or m.uses_hvp)]
    if nonlinear and _has_nonlinear(targets):
        raise MethodError(f"Finer targets and Detection(objectness=True) score a function of "
                          f"the logits that is not linear in them (softmax weights; objectness "
                          f"x class score), which {nonlinear} would see linearised at the input "
                          "as given; use first-order layer gradient methods (gradcam, "
                          "hirescam, ...) or eigencam.")


def _has_nonlinear(targets) -> bool:
    if isinstance(targets, (list, tuple)):
        return any(_has_nonlinear(t) for t in targets)
    return bool(getattr(targets, "nonlinear", False))


DENSE_TARGETS = (Segmentation, Detection)


def is_dense(value) -> bool:
    """A dense target, or a (class, mask) pair meaning Segmentation(class, mask)."""
    return isinstance(value, DENSE_TARGETS) or _is_pair(value)


def _is_pair(value) -> bool:
    return (isinstance(value, tuple) and len(value) == 2
            and isinstance(value[0], (str, int, np.integer)) and not isinstance(value[0], bool)
            and (value[1] is None or isinstance(value[1], np.ndarray)))


def mentions_dense(targets) -> bool:
    """True when `targets` holds a dense target anywhere (for all items, per item, in a list)."""
    if is_dense(targets):
        return True
    if isinstance(targets, (list, tuple)):
        return any(mentions_dense(t) for t in targets)
    return False


def plan_rows(targets, out: DenseOutput):
    """(items, classes, seeds (rows, F), the target of each row) for `targets`: one dense
    target for every item, or one entry per item, each a dense target or a list of them
    (several maps). A (class, mask) tuple is Segmentation(class, mask)."""
    if not out.shape or len(out.shape) < 2:
        raise TargetError(
            f"The model's output is (N, {', '.join(map(str, out.shape)) or ''}): it has no "
            "spatial or box axis, so it cannot be a segmentation or detection. Give class "
            "targets (an index or name), or choose the dense output with output=.")
    if is_dense(targets):
        entries = [[targets]] * out.items
    elif isinstance(targets, (list, tuple)):
        if len(targets) != out.items:
            raise TargetError(f"{len(targets)} targets given for {out.items} items; give one "
                              "per item (an entry may be a list for several maps), or one for "
                              "all.")
        entries = [[t] if is_dense(t) else t for t in targets]
    else:
        entries = None
    if entries is None or not all(isinstance(e, (list, tuple)) and e and all(
            is_dense(t) for t in e) for e in entries):
        raise TargetError(
            f"The model's output is (N, {', '.join(map(str, out.shape))}), not (N, classes): "
            "say what is explained with targets=onnx_cam.Segmentation(cls, mask=None) or "
            "onnx_cam.Detection(box=..., cls=..., layout=...) (one for all items, one per "
            f"item, or a list per item); got {_describe(targets)}.")
    items, classes, seeds, chosen = [], [], [], []
    for i, entry in enumerate(entries):
        for target in entry:
            if _is_pair(target):
                target = Segmentation(*target)
            cls, seed = target.row(out, i)
            items.append(i)
            classes.append(cls)
            seeds.append(seed)
            chosen.append(target)
    return (np.asarray(items, np.int64), np.asarray(classes, np.int64), np.stack(seeds),
            chosen)


def _describe(targets) -> str:
    text = repr(targets)
    return text if len(text) < 60 else text[:57] + "..."
