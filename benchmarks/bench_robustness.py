"""Max-Sensitivity and Local Lipschitz Estimate: onnx-cam against Quantus 0.6.0, same CPU.

Quantus re-explains each perturbation step of a batch through a torch model and an
explain_func (Captum's Saliency, or LayerGradCam resized and min-max scaled); onnx-cam
re-explains every perturbed copy of many items in `explain` calls of --batch-size copies
through ONNX Runtime. Both run --samples perturbations per item of an ECG-sized 1D model
(12 leads x 2000 samples, random weights); timed in one run, --repeats times, medians.

    python benchmarks/bench_robustness.py [--items 16] [--samples 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import onnx_cam
from onnx_cam.metrics import evaluate
from onnx_cam.metrics.relevance import relevance

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from references import quantus  # noqa: E402


def ecg_model() -> nn.Module:
    widths, layers = [12, 32, 64, 64], []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Conv1d(a, b, 7, stride=2, padding=3), nn.BatchNorm1d(b), nn.ReLU()]
    torch.manual_seed(0)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(64, 5)).eval()


def captum_saliency(model, inputs, targets, **kwargs):
    from captum.attr import Saliency
    x = torch.as_tensor(np.asarray(inputs, np.float32)).requires_grad_()
    grads = Saliency(model).attribute(x, target=torch.as_tensor(np.asarray(targets)))
    return grads.sum(1, keepdim=True).detach().numpy()


def captum_gradcam(model, inputs, targets, **kwargs):
    """Captum's LayerGradCam at the last ReLU, linearly resized, min-max scaled per item."""
    from captum.attr import LayerAttribution, LayerGradCam
    x = torch.as_tensor(np.asarray(inputs, np.float32))
    cam = LayerGradCam(model, model[8]).attribute(
        x, target=torch.as_tensor(np.asarray(targets)), relu_attributions=True)
    cam = LayerAttribution.interpolate(cam, (x.shape[-1],), "linear").detach().numpy()
    low, high = cam.min(-1, keepdims=True), cam.max(-1, keepdims=True)
    return (cam - low) / np.where(high > low, high - low, 1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    q = quantus()
    torch.set_num_threads(1)
    model = ecg_model()
    x = np.random.default_rng(0).normal(0, 1, (args.items, 12, 2000)).astype(np.float32)
    exp = onnx_cam.Explainer(model, example_input=torch.from_numpy(x[:2]),
                             runtime=onnx_cam.RuntimeOptions(intra_op_threads=1))
    metrics = {"max_sensitivity": q.MaxSensitivity, "local_lipschitz_estimate":
               q.LocalLipschitzEstimate}
    print(f"{args.items} items x {args.samples} perturbations, 12 x 2000 signals, 1 thread "
          "each\n")
    print("| metric | method | onnx-cam s | Quantus + Captum s | ratio |")
    print("|---|---|---|---|---|")
    for method, layer, reference in [("saliency", None, captum_saliency),
                                     ("gradcam", "8", captum_gradcam)]:
        res = exp.explain(x, methods=method, **({"layers": layer} if layer else {}))
        a = relevance(res, method, layer or "input")[:, None]
        for name, cls in metrics.items():
            ours, theirs = [], []
            for _ in range(args.repeats):
                start = time.perf_counter()
                evaluate(exp, x, res, name, robustness_samples=args.samples,
                         batch_size=args.batch_size)
                ours.append(time.perf_counter() - start)
                metric = cls(nr_samples=args.samples, normalise=False, disable_warnings=True)
                start = time.perf_counter()
                metric(model=model, x_batch=x, y_batch=res.targets, a_batch=a,
                       channel_first=True, explain_func=reference, device="cpu",
                       batch_size=args.batch_size)
                theirs.append(time.perf_counter() - start)
            o, t = statistics.median(ours), statistics.median(theirs)
            print(f"| {name} | {method} | {o:.2f} | {t:.2f} | {t / o:.1f}x |")


if __name__ == "__main__":
    main()
