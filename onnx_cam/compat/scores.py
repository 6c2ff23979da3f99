"""SignalGrad-CAM's explained score, written as a combination of onnx-cam's exact gradients.

SignalGrad-CAM differentiates, per item, a score made from the model output ``o``:

- several outputs, ``softmax_final=True``: ``s_c = log(clamp(o_c, eps, 1 - eps))``;
- one sigmoid output, ``softmax_final=True``: ``s_1 = logit(clamp(o, eps, 1 - eps))``,
  ``s_0 = -s_1`` (the output is read as a binary classifier);
- ``softmax_final=False``: ``s_c = o_c`` (one output: ``s_1 = o``, ``s_0 = -o``);
- a contrastive foil ``f``: ``s_t - s_f`` (a class) or ``s_t - v`` (a value, for
  ``is_regression_network``), squared when ``quadratic_contrastive_score``.

``is_regression_network`` changes nothing else: as in SignalGrad-CAM, a regression model's
single output is read as a binary classifier too (class 0 explains ``-y``, and the
"probabilities" are ``1 - sigmoid(y)``, ``sigmoid(y)``), and several outputs as classes
(their softmax is reported under ``softmax_final=False``).

Each gradient is a per-item combination of at most two gradients onnx-cam computes exactly:
``log_softmax`` / ``log_sigmoid`` of the logits (``score="log_probs"``: the same gradient as
``log(clamp(p))`` wherever the clamp is inactive, and the clamp's gradient is 0 where it is
active), the logits themselves (``logit(sigmoid(z)) = z``), or the output. :class:`ScoreRule`
gives which gradient rows to combine and with which coefficients, so the facade reproduces
SignalGrad-CAM's maps, including the all-zero maps of items whose probability is clamped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import TargetError, UnsupportedModelError

# The core score that equals the model's own output, by the head the core found.
_OUTPUT_SCORE = {None: "logits", "Softmax": "probs", "Sigmoid": "probs",
                 "LogSoftmax": "log_probs"}


def model_outputs(logits: np.ndarray, head: str | None) -> np.ndarray:
    """What the framework model returns, from the logits before its head (float64)."""
    z = logits.astype(np.float64)
    if head == "Sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if head in ("Softmax", "LogSoftmax"):
        shifted = z - z.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return log_p if head == "LogSoftmax" else np.exp(log_p)
    return z


def _is_index(value, n: int) -> bool:
    return (isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            and 0 <= value < n)


def _sign(binary_class: int) -> float:
    return 1.0 if binary_class == 1 else -1.0


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class ScoreRule:
    """How one get_cam call's score maps onto onnx-cam (see the module docstring)."""

    kind: str               # "classes", or "binary" (one output read as two classes)
    outputs: int            # the model's number of outputs
    softmax_final: bool
    head: str | None        # the final Softmax / LogSoftmax / Sigmoid onnx-cam found, if any
    eps: float
    quadratic: bool
    regression: bool        # is_regression_network: a foil is a value, not a class

    @classmethod
    def of(cls, outputs: int, head: str | None, regression: bool, softmax_final: bool,
           eps: float, quadratic: bool) -> ScoreRule:
        kind = "binary" if outputs == 1 else "classes"
        wanted = ("Sigmoid",) if kind == "binary" else ("Softmax", "Sigmoid")
        if softmax_final and head not in wanted:
            ends = f"ends in {head}" if head else "has no final Softmax / Sigmoid"
            raise UnsupportedModelError(
                f"softmax_final=True says the model ends in {' or '.join(wanted)}, but its "
                f"graph {ends}. Pass softmax_final=False if the model returns logits (or "
                "log-probabilities, or regression values); the score is then the output "
                "itself, as in SignalGrad-CAM.")
        return cls(kind, outputs, softmax_final, head, eps, quadratic, regression)

    @property
    def core_score(self) -> str:
        """The onnx-cam ``score=`` whose gradients are combined."""
        if self.softmax_final and self.kind == "classes":
            return "log_probs"
        if self.softmax_final and self.kind == "binary":
            return "logits"
        return _OUTPUT_SCORE[self.head]

    def check(self, target, foil) -> None:
        """A TargetError naming the fix for a target or foil the model cannot have.

        A single output counts as two classes (binary), regression models included, as in
        SignalGrad-CAM."""
        n = 2 if self.outputs == 1 else self.outputs
        if not _is_index(target, n):
            raise TargetError(f"target class {target!r} is not a class index of this model "
                              f"(0..{n - 1}).")
        if foil is None:
            return
        if self.regression:
            if isinstance(foil, bool) or not isinstance(foil, (int, float, np.number)):
                raise TargetError(f"contrastive foil {foil!r}: a regression model's foil is the "
                                  "value the score is contrasted with (a number).")
        elif not _is_index(foil, n):
            raise TargetError(f"contrastive foil {foil!r} is not a class index of this model "
                              f"(0..{n - 1}).")

    def rows(self, target: int, foil) -> tuple[int, ...]:
        """The model outputs whose gradients the score combines."""
        if self.kind == "binary":
            return (0,)
        return (target,) if foil is None or self.regression else (target, foil)

    def coefficients(self, outputs: np.ndarray, target: int, foil) -> np.ndarray:
        """(n, len(rows)): the score's gradient is ``sum_j coef[:, j] * grad(core row j)``."""
        values, active = self._scores(outputs)

        def part(c: int) -> np.ndarray:  # s_c's gradient in units of its core row's
            return active[:, c] * (_sign(c) if self.kind == "binary" else 1.0)

        if foil is None:
            return part(target)[:, None]
        foil_value = np.float64(foil) if self.regression else values[:, foil]
        scale = (2.0 * (values[:, target] - foil_value) if self.quadratic
                 else np.ones(len(values)))
        if self.regression:  # a value's gradient is 0
            return (scale * part(target))[:, None]
        if self.kind == "binary":
            return (scale * (part(target) - part(foil)))[:, None]
        return scale[:, None] * np.stack([part(target), -part(foil)], axis=1)

    def _scores(self, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per class: SignalGrad-CAM's score value and 1 where its clamp lets the gradient
        through (0 where the probability is clamped), both (n, classes)."""
        o = outputs.astype(np.float32)
        if self.kind == "binary":
            o = o[:, :1]
        if self.softmax_final:
            low, high = np.float32(self.eps), np.float32(1.0 - self.eps)
            active = ((o >= low) & (o <= high)).astype(np.float64)
            clamped = np.clip(o, low, high).astype(np.float64)
            values = (np.log(clamped / (1.0 - clamped)) if self.kind == "binary"
                      else np.log(clamped))
        else:
            active, values = np.ones(o.shape), o.astype(np.float64)
        if self.kind == "binary":
            return np.concatenate([-values, values], 1), np.concatenate([active, active], 1)
        return values, active

    def probabilities(self, outputs: np.ndarray, target: int, foil) -> np.ndarray:
        """What get_cam's second dictionary holds: the target's probability (n,), or the
        target's and the foil's (n, 2); a regression foil's column holds the foil value.

        As SignalGrad-CAM reads the output: a single output is binary (``[1 - p, p]``, p the
        output under softmax_final=True, else its sigmoid); several outputs are the
        probabilities themselves under softmax_final=True, else their softmax. Regression
        models included."""
        if self.kind == "binary":
            p = outputs[:, 0] if self.softmax_final else 1.0 / (1.0 + np.exp(-outputs[:, 0]))
            probs = np.stack([1.0 - p, p], axis=1)
        else:
            probs = outputs if self.softmax_final else _softmax(outputs)
        columns = [probs[:, target]]
        if foil is not None:
            columns.append(np.full(len(probs), float(foil)) if self.regression
                           else probs[:, foil])
        stacked = np.stack(columns, axis=1).astype(np.float32)
        return stacked[:, 0] if foil is None else stacked
