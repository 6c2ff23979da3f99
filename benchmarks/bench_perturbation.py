"""Occlusion: onnx-cam vs Captum 0.9's Occlusion, same model, windows, baseline and batch.

- ResNet-18, 1 x 3 x 224 x 224, window 32 x 32, stride 16 (169 windows per image);
- the ECG ResNet 1D, 4 x 12 x 5000, window 250, stride 125 (39 windows per signal);

random weights (bench_core.prepare), no softmax, each item's predicted class, baseline 0.
Each run holds `--batch` occluded inputs: Captum's perturbations_per_eval is batch / items
(its forward holds that many perturbations of every item), onnx-cam's probe batch size is
batch. onnx-cam: ``Occlusion.attribute`` through a Probe whose ONNX Runtime session a
warm-up call built; Captum: ``Occlusion.attribute`` on the torch model (a window spanning
all channels). One timed call per side; the attributions are compared (max abs difference
over the largest magnitude). "torch / onnx-cam forward per row" times one full batch of the
model on each side: occlusion is forward passes only on both sides, so its speed-up can only
be about that ratio.

    python benchmarks/bench_perturbation.py            # ~5 min on 2 busy cores
    python benchmarks/bench_perturbation.py --quick    # 2 x 112 x 112 / 2500 samples
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

from bench_core import ECGResNet1d, ResNet18, load, prepare  # noqa: E402
from captum.attr import Occlusion as CaptumOcclusion  # noqa: E402

from onnx_cam.converters import export_torch  # noqa: E402
from onnx_cam.methods import InputBatch, Occlusion  # noqa: E402
from onnx_cam.model import Model  # noqa: E402
from onnx_cam.probes import Probe  # noqa: E402
from onnx_cam.runtime import RuntimeOptions  # noqa: E402


def bench(title, model, x, window, strides, batch, threads):
    torch.set_num_threads(threads)
    with torch.no_grad():
        targets = model(x).argmax(1)
    probe = Probe(Model(export_torch(model, x)), RuntimeOptions(intra_op_threads=threads),
                  tuple(x.shape[2:]), batch)
    probe.logits(x[:1].numpy())  # builds the session
    seeds = np.eye(model.fc.out_features, dtype=np.float32)[targets.numpy()]
    method = Occlusion(window=window, strides=strides, baseline=0.0)
    inputs = InputBatch(x.numpy(), seeds, probe)

    start = time.perf_counter()
    ours = method.attribute(inputs)
    ours_s = time.perf_counter() - start

    start = time.perf_counter()
    with torch.no_grad():
        theirs = CaptumOcclusion(model).attribute(
            x, sliding_window_shapes=(x.shape[1], *window), strides=(1, *strides),
            baselines=0.0, target=targets.tolist(),
            perturbations_per_eval=max(1, batch // len(x))).numpy()
    theirs_s = time.perf_counter() - start
    diff = np.abs(np.broadcast_to(ours, theirs.shape) - theirs).max() / np.abs(theirs).max()
    full = x[:1].repeat(batch, *[1] * (x.dim() - 1))
    with torch.no_grad():
        torch_row = per_row(lambda: model(full), batch)
    ort_row = per_row(lambda: probe.logits(full.numpy()), batch)
    return dict(model=title, shape=tuple(x.shape), windows=len(method.windows(x.shape[2:])),
                passes=method.passes(inputs), ours=ours_s, theirs=theirs_s, diff=diff,
                torch_row=torch_row, ort_row=ort_row)


def per_row(run, rows: int) -> float:
    """Seconds per row of `run` (a batch of `rows`), the median of three after a warm-up."""
    run()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return sorted(times)[1] / rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="112 x 112 images, 2500-sample ECGs")
    p.add_argument("--batch", type=int, default=32, help="occluded inputs per run (32)")
    p.add_argument("--threads", type=int, default=2,
                   help="threads for torch and ONNX Runtime (default 2)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    side, length = (112, 2500) if args.quick else (224, 5000)
    cases = [("ResNet-18 2D", ResNet18(), (1 if side == 224 else 2, 3, side, side), (32, 32),
              (16, 16)),
             ("ECG ResNet 1D", ECGResNet1d(), (4, 12, length), (250,), (125,))]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, threads={args.threads}, batch "
          f"{args.batch}; load average {load()}\n")
    rows = []
    for title, model, shape, window, strides in cases:
        torch.manual_seed(args.seed)
        model = prepare(model, (8, *shape[1:]), args.seed)
        for param in model.parameters():
            param.requires_grad_(False)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed + 1))
        rows.append(bench(title, model, x, window, strides, args.batch, args.threads))
    print("| model | input | windows per item | forward passes | Captum 0.9 (s) | onnx-cam (s) "
          "| speed-up | torch / onnx-cam forward per row | max abs diff / max abs |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {' x '.join(map(str, r['shape']))} | {r['windows']} "
              f"| {r['passes']} | {r['theirs']:.1f} | {r['ours']:.1f} "
              f"| {r['theirs'] / r['ours']:.1f}x | {r['torch_row'] / r['ort_row']:.2f}x "
              f"| {r['diff']:.1e} |")
    print(f"\nload average {load()}")


if __name__ == "__main__":
    main()
