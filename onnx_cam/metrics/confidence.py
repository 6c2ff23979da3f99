"""Average drop and increase in confidence (Chattopadhyay et al., Grad-CAM++, WACV 2018).

The input is multiplied by its map (the "explanation map" E = cam * x, over all channels)
and scored again. Per row, with Y the score of x and O that of E:
avg_drop = max(0, Y - O) / Y (lower is better; undefined, NaN, when Y <= 0) and
avg_increase = 1 if O > Y else 0 (its mean over rows is the "increase in confidence").
The paper reports both as percentages of the rows' means.
"""

from __future__ import annotations

import numpy as np

from .scoring import Rows, Scorer


def confidence(rows: Rows, scorer: Scorer, original: np.ndarray) -> dict[str, np.ndarray]:
    """{"avg_drop", "avg_increase"}: (rows,) each; one forward pass per row."""
    masked = scorer.stream((rows.item(r)[None] * rows.maps[r][None, None], rows.targets[r],
                            rows.foil(r)) for r in range(len(rows)))
    with np.errstate(divide="ignore", invalid="ignore"):
        drop = np.where(original > 0, np.maximum(original - masked, 0) / original, np.nan)
    return {"avg_drop": drop, "avg_increase": (masked > original).astype(np.float64)}
