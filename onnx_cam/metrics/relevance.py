"""The relevance map the robustness, localisation and randomisation metrics read, and the
re-explanation of modified inputs with the method, layer and targets of the rows.

Channel handling, one rule for every method: a CAM's relevance is its `cam` map (rows,
*input_spatial) in [0, 1]; an input attribution's (res.attribution(m), (rows, C, *spatial)) is
its signed sum over channels, (rows, *spatial), Quantus' usual one-channel explanation (a
token model's (rows, T) attribution is taken as it is).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from ..explanation import INPUT
from .options import MetricError
from .scoring import Rows


def relevance(explanation, method, layer) -> np.ndarray:
    """(rows, *spatial) float64: the cam of a CAM method, the channel sum of an attribution."""
    cam = explanation.cam(method, layer)
    if layer != INPUT:
        return cam.astype(np.float64)
    attribution = explanation.attribution(method).astype(np.float64)
    return attribution.sum(axis=1) if attribution.ndim == cam.ndim + 1 else attribution


def model_layout(explainer, inputs: np.ndarray) -> np.ndarray:
    """Channels-first inputs (n, C, *spatial) as the model takes them."""
    if explainer.model.channels_last:
        return np.moveaxis(inputs, 1, -1)
    if explainer.model.raw_signal and len(explainer.model.input_shape) == 2:
        return inputs[:, 0]
    return inputs


def explain_copies(explainer, rows: Rows, method, layer: str, score: str, batch_size: int,
                   copies: Iterator[tuple[int, np.ndarray]],
                   consume: Callable[[int, np.ndarray, object], None]) -> None:
    """Explain modified copies of rows with each row's target and foil, the rows' method,
    layer and score: `copies` yields (row, (k, C, *spatial) channels-first copies); the copies
    of consecutive rows share explain calls of at least `batch_size` copies. consume(row,
    relevance (k, *spatial), explanation, slice of the row's copies in it) is called per row.
    """
    if explainer.model.tokens:
        raise MetricError("Robustness and randomisation metrics re-explain modified copies of "
                          "the input values; a token model's ids cannot be perturbed (use "
                          "localisation or faithfulness metrics there).")
    pending: list[tuple[int, np.ndarray]] = []

    def flush():
        inputs = np.concatenate([c for _, c in pending]).astype(np.float32)
        rs = np.concatenate([np.full(len(c), r) for r, c in pending])
        res = explainer.explain(
            model_layout(explainer, inputs), targets=rows.targets[rs].tolist(),
            foils=None if rows.foils is None else rows.foils[rs].tolist(),
            **({} if layer == INPUT else {"layers": layer}), methods=method, score=score,
            batch_size=batch_size)
        maps = relevance(res, method, layer)
        start = 0
        for r, c in pending:
            part = slice(start, start + len(c))
            consume(r, maps[part], res, part)
            start += len(c)
        pending.clear()

    count = 0
    for row, block in copies:
        pending.append((row, block))
        count += len(block)
        if count >= batch_size:
            flush()
            count = 0
    if pending:
        flush()
