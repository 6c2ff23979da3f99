"""Models with several inputs: the inputs fed as given beside the explained one.

The maps cover one input (Model.input_name); every other input of the model is fed, per
item, exactly as the caller gave it. Each input run through ONNX Runtime comes from one
item, so its side inputs are that item's: rows that repeat an item (several targets)
repeat its side inputs, and the perturbed copies of one row (steps, samples, masks) are fed
that row's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError, MethodError


@dataclass(frozen=True)
class SideInputs:
    """The inputs fed as given, name -> (items, ...) array in the model's dtype."""

    arrays: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def take(self, items) -> SideInputs:
        """The side inputs of `items` (indices into these), in that order."""
        return SideInputs({name: a[items] for name, a in self.arrays.items()})

    def feeds(self, count: int, start: int = 0, stop: int | None = None) -> dict:
        """Feeds for inputs [start:stop] of `count` inputs run together: these items' own
        (one per input), or one item's repeated for all of them."""
        stop = count if stop is None else stop
        if len(self) == count:
            return {name: np.ascontiguousarray(a[start:stop]) for name, a in self.arrays.items()}
        if len(self) == 1:
            return {name: np.ascontiguousarray(np.broadcast_to(a, (stop - start, *a.shape[1:])))
                    for name, a in self.arrays.items()}
        raise MethodError(
            f"{count} inputs were run for {len(self)} items of a model with several inputs: "
            "onnx-cam feeds each run input the side inputs of its item, so a method must run "
            "one input per item, or any number from one item.")


def side_of(side: SideInputs | None, items) -> SideInputs | None:
    """The side inputs of `items` (None: a model with one input)."""
    return None if side is None else side.take(items)


def side_feeds(model, side: SideInputs | None, count: int, start: int = 0,
               stop: int | None = None) -> dict:
    """SideInputs.feeds, {} for a model with one input; refuses a step that runs a model with
    several inputs without them."""
    if not model.side_inputs:
        return {}
    if side is None:
        raise MethodError(
            f"This step runs the model without its inputs {list(model.side_inputs)} (fed "
            f"beside the explained input {model.input_name!r}); it does not support models "
            "with several inputs.")
    return side.feeds(count, start, stop)


def split_inputs(model, x) -> tuple[object, SideInputs | None]:
    """(the explained input as given, the other inputs checked) from `x`: a dict of one array
    per input name, or a tuple in the graph's input order; one array for a one-input model."""
    names = list(model.input_names)
    if isinstance(x, tuple) and len(names) > 1:
        if len(x) != len(names):
            raise InputError(f"x is a tuple of {len(x)} arrays; the model takes {len(names)} "
                             f"inputs {names}: give one array per input, in that order, or a "
                             "dict {name: array}.")
        x = dict(zip(names, x))
    if not isinstance(x, dict):
        if len(names) > 1:
            raise InputError(
                f"The model takes {len(names)} inputs {names}: pass x as a dict {{name: "
                "array} (or a tuple in that order); the maps cover input "
                f"{model.input_name!r}, the others are fed as given.")
        return x, None
    unknown = [k for k in x if k not in names]
    if unknown:
        raise InputError(f"x names {unknown}, which the model does not take; its inputs are "
                         f"{names}.")
    missing = [k for k in names if k not in x]
    if missing:
        raise InputError(f"x lacks the input(s) {missing}; the model takes {names}: give one "
                         "array per input name, batch first.")
    explained = x[model.input_name]
    if not model.side_inputs:
        return explained, None
    try:
        items = len(explained)
    except TypeError:
        raise InputError(f"Input {model.input_name!r} must be batch first (an array, or a "
                         "list of token sequences).") from None
    side = {name: _checked(name, x[name], shape, dtype)
            for name, (shape, dtype) in model.side_inputs.items()}
    wrong = {name: len(a) for name, a in side.items() if len(a) != items}
    if wrong:
        raise InputError(f"Input {model.input_name!r} holds {items} items but {wrong} hold "
                         "other counts: every input needs one entry per item (the same first "
                         "axis length).")
    return explained, SideInputs(side)


def _checked(name: str, value, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """One side input as the model takes it: its dtype, rank and fixed axes checked."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"Input {name!r} cannot be read as an array ({exc}).") from None
    if array.dtype.kind not in "biuf":
        raise InputError(f"Input {name!r} holds {array.dtype} values; the model takes "
                         f"{dtype}.")
    if dtype.kind in "iub" and array.dtype.kind == "f":
        if not (np.isfinite(array).all() and (array == np.round(array)).all()):
            raise InputError(f"Input {name!r} takes {dtype} values; got fractions.")
    if array.ndim != len(shape):
        hint = " Add a batch axis: a[None]." if array.ndim == len(shape) - 1 else ""
        raise InputError(f"Input {name!r} takes arrays shaped {_shape_text(shape)} (batch "
                         f"first); got shape {array.shape}.{hint}")
    for axis, (want, got) in enumerate(zip(shape[1:], array.shape[1:]), start=1):
        if want is not None and want != got:
            raise InputError(f"Input {name!r} takes size {want} along axis {axis} "
                             f"({_shape_text(shape)}); got shape {array.shape}.")
    array = np.ascontiguousarray(array, dtype)
    if dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))
        if len(bad):
            raise InputError(f"Input {name!r} holds NaN or Inf at items {bad.tolist()[:20]}; "
                             "clean or drop them before explaining.")
    return array


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join("N" if i == 0 else ("?" if d is None else str(d))
                           for i, d in enumerate(shape)) + ")"
