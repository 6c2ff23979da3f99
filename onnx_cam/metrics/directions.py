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
    # faithfulness (Quantus')
    "faithfulness_correlation": "higher", "faithfulness_estimate": "higher",
    "monotonicity": "higher", "monotonicity_correlation": "higher", "irof": "higher",
    "sufficiency": "higher", "pixel_flipping": "lower", "selectivity": "lower",
    "infidelity": "lower", "infidelity_quantus": "lower", "region_perturbation": "higher",
    # complexity
    "sparseness": "higher", "complexity": "lower", "effective_complexity": "lower",
    "arcc": "higher",
    # robustness
    "max_sensitivity": "lower", "avg_sensitivity": "lower", "local_lipschitz_estimate": "lower",
    "continuity": "lower", "relative_input_stability": "lower",
    "relative_output_stability": "lower", "relative_representation_stability": "lower",
    # localisation
    "pointing_game": "higher", "attribution_localisation": "higher",
    "top_k_intersection": "higher", "relevance_mass_accuracy": "higher",
    "relevance_rank_accuracy": "higher", "auc": "higher", "focus": "higher",
    "energy_pointing_game": "higher",
    # randomisation
    "mprt_independent": "lower", "smooth_mprt": "lower", "efficient_mprt": "higher",
    "random_logit": "lower",
}
