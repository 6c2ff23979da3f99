"""Turn the user's targets= and foils= into rows: (input item, target class, foil class)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .dense import DenseOutput, mentions_dense, plan_rows
from .errors import TargetError

_TOP_K = re.compile(r"top-?(\d+)$")


@dataclass(frozen=True)
class TargetPlan:
    """One row per map to compute: which input item, which target, which foil (or none)."""

    items: np.ndarray             # (R,) index into the input batch
    targets: np.ndarray           # (R,) class / output index explained
    foils: np.ndarray | None      # (R,) class subtracted (contrastive), or None
    # (R, K): d score / d logits of each row when the score is not one logit (Finer)
    seeds: np.ndarray | None = None
    # dense targets: each row's predicted classes (per position / box) from its logits (R, F)
    predicted: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.items, np.arange(len(self.items))))


@dataclass(frozen=True)
class Finer:
    """FinerCAM's target (Zhang et al., CVPR 2025, as pytorch-grad-cam's FinerWeightedTarget):
    the score sum_k p_k (z_t - alpha z_k) / sum_k p_k over the classes k whose logits are
    nearest the target's (the `comparisons`-th nearest, 1 = nearest), p = softmax(logits),
    differentiated through p as well. Pass as targets=Finer(...); target None explains each
    item's predicted class. The gradient of this score at any layer is the logits' gradient
    seeded with d score / d logits, which is what each row's seed holds.
    """

    alpha: float = 1.0
    comparisons: tuple[int, ...] = (1, 2, 3)
    target: int | str | None = None
    # not linear in the logits: a method differentiating away from the input as given (IG,
    # SmoothGrad) or to second order would see its seed's linearisation (dense.check_dense)
    nonlinear: ClassVar[bool] = True

    def plan(self, logits: np.ndarray, class_names: Sequence[str] | None) -> TargetPlan:
        n, classes = logits.shape
        z = logits.astype(np.float64)
        if self.target is None:
            main = z.argmax(1)
        else:
            main = np.full(n, _Resolver(classes, class_names).one(self.target, 0, "target"))
        order = np.argsort(np.abs(z - z[np.arange(n), main][:, None]), axis=1, kind="stable")
        ranks = [c for c in self.comparisons if 0 < c < classes]
        if not ranks:
            raise TargetError(f"Finer(comparisons={self.comparisons}) names no class to "
                              f"compare with among the model's {classes}: use ranks 1.."
                              f"{classes - 1} (1 = the class whose logit is nearest).")
        seeds = np.stack([_finer_gradient(z[i], main[i], order[i, ranks], self.alpha)
                          for i in range(n)])
        return TargetPlan(np.arange(n), main.astype(np.int64), None, seeds.astype(np.float32))


def _plan_dense(targets, foils, dense: DenseOutput | None) -> TargetPlan:
    if dense is None:
        raise TargetError("Segmentation / Detection targets are taken by Explainer.explain "
                          "only.")
    if foils is not None:
        raise TargetError("foils= are for class scores; Segmentation / Detection targets "
                          "take none (explain the other class as a second target).")
    items, classes, seeds, chosen = plan_rows(targets, dense)

    def predicted(logits: np.ndarray) -> np.ndarray:
        values = logits.reshape(len(logits), *dense.shape)
        return np.stack([t.predicted(dense, values[r:r + 1])[0] for r, t in enumerate(chosen)])

    return TargetPlan(items, classes, None, seeds, predicted)


def _finer_gradient(z: np.ndarray, main: int, others: np.ndarray, alpha: float) -> np.ndarray:
    """d/dz of sum_k p_k (z_main - alpha z_k) / (sum_k p_k + 1e-9) over k in `others`."""
    p = np.exp(z - z.max())
    p /= p.sum()
    w, d = p[others], z[main] - alpha * z[others]
    dw = w[:, None] * (np.eye(len(z))[others] - p[None, :])     # d w_k / d z
    dd = -alpha * np.eye(len(z))[others]
    dd[:, main] += 1.0                                           # d (z_main - alpha z_k) / d z
    numerator, denominator = w @ d, w.sum() + 1e-9
    d_numerator = d @ dw + w @ dd
    return (d_numerator * denominator - numerator * dw.sum(0)) / denominator**2


def plan_targets(targets, foils, n: int, classes: int, class_names: Sequence[str] | None,
                 predict: Callable[[], np.ndarray],
                 dense: DenseOutput | None = None) -> TargetPlan | None:
    """Resolve targets / foils for n items; None means "explain each predicted class".

    targets: None (predicted), "all", "top<k>", an index or name for every item, or one entry
    per item, each an index, a name, or a list of them (several maps for that item).
    foils: None, an index or name for every item, or one entry (or list) per item; each
    (target, foil) pair becomes one contrastive map.
    dense: the model's output, for Segmentation / Detection targets (onnx_cam.dense); a
    model with a dense output takes only those.
    """
    if targets is None and foils is None:
        return None
    if (dense is not None and len(dense.shape) > 1) or mentions_dense(targets):
        return _plan_dense(targets, foils, dense)
    if isinstance(targets, Finer):
        if foils is not None:
            raise TargetError("Finer targets compare with the nearest classes themselves; "
                              "give no foils= with them.")
        return targets.plan(predict(), class_names)
    resolve = _Resolver(classes, class_names)
    if targets is None or (isinstance(targets, str) and (targets == "all"
                                                         or _TOP_K.match(targets))):
        per_item = _from_scores(targets, predict(), classes)
    else:
        per_item = [resolve.many(entry, i, "target") for i, entry in enumerate(_per_item(
            targets, n, "target"))]
    foil_lists = (None if foils is None else
                  [resolve.many(entry, i, "foil") for i, entry in enumerate(_per_item(
                      foils, n, "foil"))])
    items, tgt, fl = [], [], []
    for i in range(n):
        for t in per_item[i]:
            for f in (foil_lists[i] if foil_lists is not None else [None]):
                items.append(i)
                tgt.append(t)
                fl.append(f)
    return TargetPlan(np.asarray(items, np.int64), np.asarray(tgt, np.int64),
                      None if foils is None else np.asarray(fl, np.int64))


def seed_rows(plan: TargetPlan, start: int, count: int, classes: int) -> np.ndarray:
    """One row per map: +1 on the target class, -1 on the foil (contrastive) if any; the
    plan's own seeds when its score is a function of several logits (Finer)."""
    if plan.seeds is not None:
        return plan.seeds[start:start + count]
    seed = np.zeros((count, classes), np.float32)
    rows = np.arange(count)
    seed[rows, plan.targets[start:start + count]] += 1.0
    if plan.foils is not None:
        seed[rows, plan.foils[start:start + count]] -= 1.0
    return seed


def one_hot(logits: np.ndarray) -> np.ndarray:
    """The seed the graph used when explaining the predicted class."""
    seed = np.zeros_like(logits)
    seed[np.arange(len(logits)), logits.argmax(1)] = 1.0
    return seed


def _from_scores(spec, logits: np.ndarray, classes: int) -> list[list[int]]:
    if spec is None:
        return [[int(k)] for k in logits.argmax(1)]
    if spec == "all":
        return [list(range(classes)) for _ in logits]
    k = int(_TOP_K.match(spec).group(1))
    if not 1 <= k <= classes:
        raise TargetError(f"targets={spec!r} asks for {k} classes; the model scores {classes}.")
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return [[int(c) for c in row] for row in order]


def _is_scalar(value) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim == 0
    return isinstance(value, (str, bytes)) or not hasattr(value, "__iter__")


def _per_item(value, n: int, what: str) -> list:
    if _is_scalar(value):
        return [value] * n
    entries = list(value)
    if len(entries) != n:
        raise TargetError(f"{len(entries)} {what}s given for {n} items; give one per item "
                          "(an entry may be a list for several maps), or one for all.")
    return entries


class _Resolver:
    def __init__(self, classes: int, class_names: Sequence[str] | None):
        self.classes, self.class_names = classes, class_names

    def many(self, entry, item: int, what: str) -> list[int]:
        if _is_scalar(entry):
            return [self.one(entry.item() if isinstance(entry, np.ndarray) else entry, item,
                             what)]
        values = [self.one(e, item, what) for e in entry]
        if not values:
            raise TargetError(f"The {what} list of item {item} is empty.")
        return values

    def one(self, value, item: int, what: str) -> int:
        if isinstance(value, str):
            if self.class_names is None or value not in self.class_names:
                hint = ("Give class_names= to the Explainer." if self.class_names is None
                        else f"Known classes: {list(self.class_names)}.")
                raise TargetError(f"Unknown class name {value!r} for {what} of item {item}. "
                                  + hint)
            return list(self.class_names).index(value)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if not 0 <= value < self.classes:
                raise TargetError(f"{what.capitalize()} {value} of item {item} is out of range: "
                                  f"the model scores classes 0..{self.classes - 1}.")
            return int(value)
        raise TargetError(f"{what.capitalize()} of item {item} is {value!r}; give a class index "
                          "or a class name.")
