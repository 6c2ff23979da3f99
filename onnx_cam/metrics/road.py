"""ROAD: RemOve And Debias (Rong et al., "A Consistent and Efficient Evaluation Strategy for
Attribution Methods", ICML 2022).

Removed positions are filled by noisy linear imputation (perturb.linear_impute), which leaks
far less of the removed pattern's shape than a constant or a blur, so the model's reaction
measures the information removed rather than the mask. For each removed fraction f:
MoRF removes the f most relevant positions, LeRF the f least relevant.

Per row, as pytorch-grad-cam's ROADMostRelevantFirstAverage / ...LeastRelevantFirstAverage /
ROADCombined: road_morf = mean_f score(MoRF f) - score(x), road_lerf likewise, and
road = (road_lerf - road_morf) / 2 (higher is better).
"""

from __future__ import annotations

import numpy as np

from .options import ROAD_FRACTIONS, Purpose, row_rng
from .perturb import Perturbation, ranked_masks, removal_counts
from .scoring import Rows, Scorer


def road(rows: Rows, scorer: Scorer, original: np.ndarray, *, fractions=ROAD_FRACTIONS,
         noise: float = 0.01, seed: int = 0) -> dict[str, np.ndarray]:
    """{"road_morf", "road_lerf", "road"}: (rows,) each; `original` is the rows' unperturbed
    scores. One run of 2 * len(fractions) imputed copies per row."""
    counts = removal_counts(rows.positions, fractions)
    imputer = Perturbation("interp", noise=noise)

    def blocks():
        for r in range(len(rows)):
            masks = np.concatenate([ranked_masks(rows.maps[r], counts, most_first=True),
                                    ranked_masks(rows.maps[r], counts, most_first=False)])
            yield imputer.apply(rows.item(r), masks, row_rng(seed, rows.ids[r], Purpose.NOISE)), \
                rows.targets[r], rows.foil(r)

    scores = scorer.stream(blocks()).reshape(len(rows), 2, len(counts))
    morf = scores[:, 0].mean(axis=1) - original
    lerf = scores[:, 1].mean(axis=1) - original
    return {"road_morf": morf, "road_lerf": lerf, "road": (lerf - morf) / 2}
