"""The rows a metric evaluates, and their scores on perturbed inputs, batched through ONNX
Runtime (many perturbed copies per run, whatever the rows they come from)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
from scipy import special

from ..errors import InputError
from ..side_inputs import SideInputs
from .options import MetricError


@dataclass(frozen=True)
class Rows:
    """The explanation rows (item, target, foil) with their maps and inputs.

    given: the input as the model takes it (for re-explaining); inputs: the same, channels
    first (N, C, *spatial), what is perturbed and scored; maps: (rows, *spatial); ids: each
    row's index in the explanation (what seeds its random draws); attributions: the signed
    input attribution (rows, C or 1, *spatial) of an input-level method, None for CAMs.
    """

    given: np.ndarray
    inputs: np.ndarray
    items: np.ndarray
    targets: np.ndarray
    foils: np.ndarray | None
    maps: np.ndarray
    ids: np.ndarray
    attributions: np.ndarray | None = None

    @classmethod
    def from_explanation(cls, explainer, x, explanation, method=None, layer=None) -> Rows:
        maps = explanation.cam(method, layer)
        given = np.asarray(x, np.float32)
        # (N, C, *spatial) whatever the layout; items with NaN / Inf get NaN metrics
        inputs = explainer.check_input(given, nonfinite="flag")
        items = np.asarray(explanation.items)
        if len(items) and (items.min() < 0 or items.max() >= len(inputs)):
            raise InputError(f"The explanation's rows refer to items up to {items.max()}, but "
                             f"x holds {len(inputs)} items: pass the x that was explained.")
        if maps.shape[1:] != inputs.shape[2:]:
            raise InputError(f"The maps are {maps.shape[1:]} but the input's spatial axes are "
                             f"{inputs.shape[2:]}: pass the x that was explained.")
        name = explanation._key(method, layer)[0]
        return cls(given, inputs, items, np.asarray(explanation.targets),
                   None if explanation.foils is None else np.asarray(explanation.foils), maps,
                   np.arange(len(items)), explanation.attributions.get(name))

    def __len__(self) -> int:
        return len(self.items)

    @property
    def positions(self) -> int:
        return int(np.prod(self.maps.shape[1:]))

    def item(self, row: int) -> np.ndarray:
        return self.inputs[self.items[row]]

    def foil(self, row: int) -> int:
        return -1 if self.foils is None else int(self.foils[row])

    def with_maps(self, maps: np.ndarray) -> Rows:
        return replace(self, maps=maps, attributions=None)

    @property
    def finite(self) -> np.ndarray:
        """(rows,) bool: the row's input item and map hold no NaN / Inf."""
        items = self.inputs.reshape(len(self.inputs), -1)
        return (np.isfinite(items).all(axis=1)[self.items]
                & np.isfinite(self.maps.reshape(len(self.maps), -1)).all(axis=1))

    def subset(self, keep: np.ndarray) -> Rows:
        return replace(self, items=self.items[keep], targets=self.targets[keep],
                       foils=None if self.foils is None else self.foils[keep],
                       maps=self.maps[keep], ids=self.ids[keep],
                       attributions=None if self.attributions is None
                       else self.attributions[keep])


class Scorer:
    """seed . score of the rows' classes for batches of inputs, through ONNX Runtime.

    kind: "probs" (the model's softmax, or sigmoid under a Sigmoid head), "logits" or
    "log_probs". A row with a foil scores target minus foil. `forward_passes` counts the
    inputs run, for cost accounting.
    """

    def __init__(self, explainer, spatial: tuple[int, ...], kind: str, batch_size: int,
                 side: SideInputs | None = None):
        """side: a model's other inputs, one per row; block k of `stream` is then row k."""
        self._probe = explainer._probe(tuple(spatial), batch_size)
        self._side = side
        self._sigmoid = explainer.head == "Sigmoid"
        self.kind, self.batch_size = kind, batch_size
        self.forward_passes = 0

    def _values(self, logits: np.ndarray) -> np.ndarray:
        logits = logits.astype(np.float64)
        if self.kind == "logits":
            return logits
        if self._sigmoid:
            return special.expit(logits) if self.kind == "probs" else special.log_expit(logits)
        if self.kind == "probs":
            return special.softmax(logits, axis=1)
        return special.log_softmax(logits, axis=1)

    def scores(self, inputs: np.ndarray, targets: np.ndarray, foils: np.ndarray,
               rows: np.ndarray | None = None) -> np.ndarray:
        """(m,) scores of `inputs` (m, C, *spatial); foils < 0 mean none; rows: the row each
        input comes from (needed with side inputs)."""
        probe = self._probe
        if self._side is not None:
            probe = probe.bound(self._side.take(rows))
        values = self._values(probe.logits(inputs))
        self.forward_passes += len(inputs)
        rows = np.arange(len(inputs))
        result = values[rows, targets]
        has_foil = foils >= 0
        result[has_foil] -= values[rows[has_foil], foils[has_foil]]
        return result

    def stream(self, blocks: Iterable[tuple[np.ndarray, int, int]]) -> np.ndarray:
        """Scores of every copy of every block, in order, run `batch_size` copies at a time.

        blocks: (copies (k, C, *spatial), target, foil or -1), typically one per row (always,
        with side inputs: block k is row k).
        """
        done: list[np.ndarray] = []
        pending: list[tuple[np.ndarray, ...]] = []
        count = 0
        for row, (copies, target, foil) in enumerate(blocks):
            pending.append((copies, np.full(len(copies), target), np.full(len(copies), foil),
                            np.full(len(copies), row)))
            count += len(copies)
            if count >= self.batch_size:
                xs, ts, fs, rs = (np.concatenate(part) for part in zip(*pending))
                full = count - count % self.batch_size
                done.append(self.scores(xs[:full], ts[:full], fs[:full], rs[:full]))
                pending, count = [(xs[full:], ts[full:], fs[full:], rs[full:])], count - full
        if count:
            done.append(self.scores(*(np.concatenate(part) for part in zip(*pending))))
        return np.concatenate(done) if done else np.empty(0)


def score_kind(explainer, requested: str | None) -> str:
    """The score to read: as requested, else probabilities (logits for a single-output model
    without a head, which is a regression, whose only sensible score is its output)."""
    if explainer.model.dense:  # its rows' scores are masked sums / box scores, not classes
        raise MetricError("The faithfulness metrics score classes of a (N, classes) output; "
                          "this model's output is dense (segmentation / detection), which "
                          "they do not score yet.")
    regression = explainer.head is None and explainer.num_classes == 1
    if requested is None:
        return "logits" if regression else "probs"
    if regression and requested != "logits":
        raise MetricError(f"score={requested!r} needs class scores; this model has a single "
                          "output and no head (a regression): use score='logits'.")
    return requested
