"""ONNX Runtime's thread spinning, `RuntimeOptions(spinning=...)`, on whole onnx-cam calls.

"never": ONNX Runtime's threads sleep as soon as they find no work; "during runs": they spin
while a run is in progress and stop when it ends (`session.force_spinning_stop`); "always":
ONNX Runtime's default, they also spin for a while after each run, on the cores the CAM
kernels (and everything else in the process) need next.

One Explainer per setting on bench_core's models, all in this process; per call, the median
of --repeats interleaved rounds (every setting in every round, 0.2 s apart, so that threads
spinning after one call do not slow the next). Ratios are against "never"; < 1 is faster.

    python benchmarks/bench_spinning.py                  # ~4 min on 2 cores
    python benchmarks/bench_spinning.py --calls gradcam --repeats 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

from bench_core import CNN3d, ECGResNet1d, ResNet18, load, prepare  # noqa: E402

import onnx_cam  # noqa: E402
from onnx_cam.methods import IntegratedGradients  # noqa: E402

warnings.filterwarnings("ignore")
SETTINGS = ("never", "during runs", "always")
PAUSE = 0.2
MODELS = {  # key: (title, model, input shape)
    "resnet18": ("ResNet-18", ResNet18, (16, 3, 224, 224)),
    "ecg1d": ("ECG ResNet 1D", ECGResNet1d, (16, 12, 5000)),
    "cnn3d": ("3D CNN", CNN3d, (8, 1, 32, 64, 64)),
}
CALLS = {  # kind: [(model key, label, call(explainer, x))]
    "gradcam": [
        ("resnet18", "Grad-CAM layer4", lambda e, x: e.explain(x, layers="layer4")),
        ("resnet18", "Grad-CAM layer2", lambda e, x: e.explain(x, layers="layer2")),
        ("ecg1d", "Grad-CAM layer4", lambda e, x: e.explain(x, layers="layer4")),
        ("cnn3d", "Grad-CAM stage4", lambda e, x: e.explain(x, layers="stage4")),
        ("cnn3d", "Grad-CAM stage2", lambda e, x: e.explain(x, layers="stage2")),
    ],
    "ig": [  # 4 items, 50 steps: 200 forward + backward rows in runs of 64
        ("resnet18", "Integrated Gradients", lambda e, x: e.explain(
            x[:4], [0, 1, 2, 3], methods=IntegratedGradients(n_steps=50), batch_size=64)),
        ("ecg1d", "Integrated Gradients", lambda e, x: e.explain(
            x[:4], [0, 1, 2, 3], methods=IntegratedGradients(n_steps=50), batch_size=64)),
    ],
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", default="gradcam,ig", help="comma-separated: gradcam, ig")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    calls = [c for kind in args.calls.split(",") for c in CALLS[kind]]
    print(f"onnx-cam {onnx_cam.__version__}, {args.threads} threads, median of {args.repeats} "
          f"interleaved rounds; load average {load()}\n")
    print("| model | call | " + " | ".join(f"{s} (s)" for s in SETTINGS)
          + " | " + " | ".join(f"{s} / never" for s in SETTINGS[1:]) + " |")
    print("|---|---|" + "---:|" * (2 * len(SETTINGS) - 1))
    for key in dict.fromkeys(k for k, _, _ in calls):
        title, build, shape = MODELS[key]
        torch.manual_seed(0)
        model = prepare(build(), (max(shape[0], 8), *shape[1:]), 0)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        explainers = {s: onnx_cam.Explainer(model, example_input=x, runtime=onnx_cam.RuntimeOptions(
            intra_op_threads=args.threads, spinning=s)) for s in SETTINGS}
        x = x.numpy()
        for _, label, call in (c for c in calls if c[0] == key):
            for e in explainers.values():  # warm-up: builds and caches the sessions
                call(e, x)
            samples = {s: [] for s in SETTINGS}
            for r in range(args.repeats):
                for s in SETTINGS[r % 3:] + SETTINGS[:r % 3]:  # rotate who goes first
                    time.sleep(PAUSE)
                    t0 = time.perf_counter()
                    call(explainers[s], x)
                    samples[s].append(time.perf_counter() - t0)
            med = {s: statistics.median(v) for s, v in samples.items()}
            print(f"| {title} {'x'.join(map(str, shape))} | {label} | "
                  + " | ".join(f"{med[s]:.3f}" for s in SETTINGS) + " | "
                  + " | ".join(f"{med[s] / med['never']:.2f}" for s in SETTINGS[1:]) + " |",
                  flush=True)
    print(f"\nload average {load()}")


if __name__ == "__main__":
    main()
