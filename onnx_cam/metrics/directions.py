"""Which way each metric of onnx_cam.metrics moves for a better map: "higher" or "lower".

Metrics not listed have no better direction: the `<metric>_random` baselines (the same value
for every method: a random map), class distances. Reports that rank methods (onnx-cam
compare's radar chart) leave them out rather than guess; a new metric with a direction is
added here.
"""

from __future__ import annotations

BETTER: dict[str, str] = {
    "deletion": "lower", "insertion": "higher",
    "road": "higher", "road_morf": "lower", "road_lerf": "higher",
    "avg_drop": "lower", "avg_increase": "higher",
    "randomization_spearman": "lower", "randomization_ssim": "lower",
    "random_label_spearman": "lower", "random_label_ssim": "lower",
}
