"""Deletion and insertion curves (Petsiuk et al., RISE, BMVC 2018) and their area.

Deletion removes positions in the map's order and follows the score down from the input;
insertion puts them back in the same order, starting from the fully removed input, and
follows it up. A faithful map gives a low deletion and a high insertion area (MoRF order).
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import trapezoid

from .options import Purpose, row_rng
from .perturb import Perturbation, ranked_masks, removal_counts
from .scoring import Rows, Scorer


def curve_fractions(positions: int, step: float) -> np.ndarray:
    """The removed fractions 0, step, 2 step, ..., 1, each rounded to whole positions."""
    steps = int(np.ceil(1.0 / step - 1e-9))
    nominal = np.minimum(np.arange(steps + 1) * step, 1.0)
    return removal_counts(positions, nominal) / positions


def curves(rows: Rows, scorer: Scorer, perturbation: Perturbation, *, step: float = 0.05,
           order: str = "morf", insertion: bool = False,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fractions (K,), scores (rows, K)): the score of each row with the fraction of its
    positions removed (deletion) or inserted (insertion), most relevant first ("morf") or
    least relevant first ("lerf")."""
    fractions = curve_fractions(rows.positions, step)
    counts = removal_counts(rows.positions, fractions)

    def blocks():
        for r in range(len(rows)):
            masks = ranked_masks(rows.maps[r], counts, most_first=order == "morf")
            if insertion:  # inserted: the first counts[k]; removed: all the others
                masks = ~masks
            rng = row_rng(seed, rows.ids[r], Purpose.NOISE)
            yield perturbation.apply(rows.item(r), masks, rng), rows.targets[r], rows.foil(r)

    return fractions, scorer.stream(blocks()).reshape(len(rows), len(fractions))


def area(fractions: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Area under each row's curve over the removed fraction (trapezoids), (rows,)."""
    return trapezoid(scores, fractions, axis=1)
