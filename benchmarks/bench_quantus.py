"""onnx-cam's explain + evaluate against Captum explanations + Quantus 0.6.0 metrics, on a
seed-toolkit-sized run: 4 methods x 3 faithfulness metrics x 100 ECG-shaped items (12 leads x
1000 samples, a 1D CNN with random weights), one run of each, on the same CPU.

    python benchmarks/bench_quantus.py [--items 100] [--threads 0]

Both sides compute the same metrics with the same forward-pass counts per item:
faithfulness_correlation (100 random subsets of 224 features), pixel_flipping (24 steps)
and monotonicity_correlation (24 steps x 10 uniform fills), on logits, baseline 0. Quantus
gets Captum's maps (LayerGradCam upsampled, IntegratedGradients, Saliency, InputXGradient);
onnx-cam explains with its own methods. Quantus needs its test-only install (.venv/refs).
Prints a markdown table of seconds per method (explain, metrics) and the ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import onnx_cam
from onnx_cam.metrics import evaluate

METHODS = ["gradcam", "integrated_gradients", "saliency", "input_x_gradient"]
LEADS, SAMPLES, STEPS, FILLS = 12, 1000, 24, 10


def ecg_model() -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    widths = [LEADS, 32, 64, 64]
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Conv1d(a, b, 7, stride=2, padding=3), nn.BatchNorm1d(b), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                         nn.Linear(64, 5)).eval()


def captum_maps(model, method: str, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    import captum.attr as ca

    if method == "gradcam":
        attr = ca.LayerGradCam(model, model[8]).attribute(x, targets, relu_attributions=True)
        return ca.LayerAttribution.interpolate(attr, (SAMPLES,), "linear").detach().numpy()
    explainer = {"integrated_gradients": ca.IntegratedGradients, "saliency": ca.Saliency,
                 "input_x_gradient": ca.InputXGradient}[method](model)
    kwargs = {"internal_batch_size": 100} if method == "integrated_gradients" else {}
    if method == "saliency":
        kwargs["abs"] = False
    return explainer.attribute(x, target=targets, **kwargs).detach().numpy()


def quantus_metrics(quantus, model, x, targets, a):
    per_step = LEADS * SAMPLES // STEPS   # Quantus broadcasts a map over the 12 leads
    common = {"perturb_baseline": 0.0, "disable_warnings": True, "return_aggregate": False}
    metrics = [
        quantus.FaithfulnessCorrelation(nr_runs=100, subset_size=224, **common),
        quantus.PixelFlipping(features_in_step=per_step, **common),
        quantus.MonotonicityCorrelation(features_in_step=per_step, nr_samples=FILLS,
                                        disable_warnings=True),
    ]
    for metric in metrics:
        metric(model=model, x_batch=x, y_batch=targets, a_batch=a, channel_first=True,
               softmax=False, device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from references import quantus as load_quantus

    quantus = load_quantus()
    model = ecg_model()
    x = np.random.default_rng(0).normal(size=(args.items, LEADS, SAMPLES)).astype(np.float32)
    exp = onnx_cam.Explainer(model, example_input=torch.from_numpy(x[:2]))
    targets = exp.explain(x[:1], methods="gradcam").targets   # warm the sessions
    rows = ["| method | onnx-cam explain | onnx-cam metrics | Captum explain | Quantus metrics "
            "| metrics ratio | total ratio |", "|---|---|---|---|---|---|---|"]
    totals = np.zeros(4)
    for method in METHODS:
        start = time.perf_counter()
        res = exp.explain(x, methods=method)
        explained = time.perf_counter()
        positions = res.cam().shape[1] if method == "gradcam" else res.attribution()[0].size
        evaluate(exp, x, res, ["faithfulness_correlation", "pixel_flipping",
                               "monotonicity_correlation"], score="logits", baseline="zero",
                 runs=100, subset_size=224, features_in_step=-(-positions // STEPS),
                 samples=FILLS, uniform_range=(0.0, 1.0))
        ours = (explained - start, time.perf_counter() - explained)
        targets = torch.as_tensor(res.targets)
        start = time.perf_counter()
        maps = captum_maps(model, method, torch.from_numpy(x), targets)
        explained = time.perf_counter()
        quantus_metrics(quantus, model, x, targets.numpy(), maps)
        theirs = (explained - start, time.perf_counter() - explained)
        totals += (*ours, *theirs)
        rows.append(f"| {method} | {ours[0]:.1f} | {ours[1]:.1f} | {theirs[0]:.1f} | "
                    f"{theirs[1]:.1f} | {theirs[1] / ours[1]:.1f}x | "
                    f"{sum(theirs) / sum(ours):.1f}x |")
    rows.append(f"| all | {totals[0]:.1f} | {totals[1]:.1f} | {totals[2]:.1f} | "
                f"{totals[3]:.1f} | {totals[3] / totals[1]:.1f}x | "
                f"{totals[2:].sum() / totals[:2].sum():.1f}x |")
    print(f"{args.items} items of {LEADS} x {SAMPLES}, seconds, one run:")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
