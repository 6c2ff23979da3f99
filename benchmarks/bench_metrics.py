"""Cost of each metric per item against its forward-pass floor.

Every perturbation metric is a number of forward passes per item (perturbed copies scored
through ONNX Runtime in batches of --batch-size) plus the work of making the copies (a
blur, a sparse linear solve per imputed copy). The floor is what those forward passes alone
cost: passes x (one forward pass per item, timed on a full batch of the same model). The
sanity checks re-explain the rows (one CAM run per item, on a randomised copy of the model
or for a random label); their floor is one `explain` per item.

    python benchmarks/bench_metrics.py [--items 8] [--batch-size 64] [--repeats 1]

Prints one markdown table per model (1D signal, 2D image, 3D volume; random weights), and
deletion with --batch-size copies per run against one run per copy. The ratio column is
what to read: the milliseconds move with the load of a shared machine. ROAD's 2D / 3D
solves (multigrid-preconditioned conjugate gradients, Numba; a row's copies on a thread per
core, as ONNX Runtime runs the forward passes) use no BLAS; to compare with versions that
solved through scipy, set OPENBLAS_NUM_THREADS=1 on a loaded machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn

import onnx_cam
from onnx_cam.metrics import evaluate
from onnx_cam.probes import Probe

METRICS = [
    ("deletion", {}), ("insertion", {}), ("deletion", {"baseline": "interp"}),
    ("road", {}), ("avg_drop", {}), ("randomization_spearman", {}),
    ("random_label_spearman", {}), ("class_distance", {}),
]
REEXPLAIN = {"randomization_spearman", "random_label_spearman"}


def model(dims: int) -> tuple[nn.Module, tuple[int, ...]]:
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[dims]
    channels, shape = {1: (12, (2000,)), 2: (3, (64, 64)), 3: (1, (16, 32, 32))}[dims]
    kernel = 7 if dims == 1 else 3
    widths = [channels, 32, 64, 64]
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [conv(a, b, kernel, stride=2, padding=kernel // 2), norm(b), nn.ReLU()]
    net = nn.Sequential(*layers, pool(1), nn.Flatten(), nn.Linear(64, 5), nn.Softmax(dim=1))
    return net.eval(), (channels, *shape)


class PassCounter:
    """Counts the inputs every forward-only Probe runs (Probe.logits, wrapped once)."""

    def __init__(self):
        self.count, logits = 0, Probe.logits

        def counted(probe, inputs):
            self.count += len(inputs)
            return logits(probe, inputs)
        Probe.logits = counted


def timed(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(dims: int, items: int, batch_size: int, repeats: int,
          counter: PassCounter) -> list[str]:
    torch.manual_seed(0)
    net, item_shape = model(dims)
    x = np.random.default_rng(0).normal(size=(items, *item_shape)).astype(np.float32)
    exp = onnx_cam.Explainer(net, example_input=torch.from_numpy(x[:2]))
    res = exp.explain(x, methods="gradcam")
    full = np.repeat(x[:1], batch_size, axis=0)
    exp._probe(item_shape[1:], batch_size).logits(full)                       # warm-up
    forward = timed(lambda: exp._probe(item_shape[1:], batch_size).logits(full), 5) / batch_size
    exp.explain(x[:1])
    explain = timed(lambda: exp.explain(x, methods="gradcam"), 5) / items
    lines = [f"\n### {dims}D: {type(net[0]).__name__} net, items {item_shape}, {items} items, "
             f"batch {batch_size}\n",
             f"one forward pass: {forward * 1e3:.3f} ms per item; one Grad-CAM explain: "
             f"{explain * 1e3:.3f} ms per item\n",
             "| metric | model runs per item | ms per item | floor ms per item | cost / floor |",
             "|---|---:|---:|---:|---:|"]
    for name, options in METRICS:
        evaluate(exp, x[:1], exp.explain(x[:1]), [name], batch_size=batch_size,
                 **options)                                                    # warm-up
        counter.count = 0
        seconds = timed(lambda n=name, o=options: evaluate(exp, x, res, [n],
                                                           batch_size=batch_size, **o),
                        repeats) / items
        passes = counter.count / repeats / items
        if name in REEXPLAIN:
            runs, floor = "1 explain", explain
        else:
            runs, floor = f"{passes:.0f} forward", passes * forward
        label = name + "".join(f" ({k}={v})" for k, v in options.items())
        ratio = f"{seconds / floor:.1f}x" if floor else "-"
        lines.append(f"| {label} | {runs} | {seconds * 1e3:.1f} | {floor * 1e3:.1f} | {ratio} |")
    batched = timed(lambda: evaluate(exp, x, res, ["deletion"], batch_size=batch_size),
                    repeats) / items
    single = timed(lambda: evaluate(exp, x, res, ["deletion"], batch_size=1), repeats) / items
    lines += ["", f"deletion, one ORT run per copy: {single * 1e3:.1f} ms per item; "
              f"{batch_size} copies per run: {batched * 1e3:.1f} ms per item "
              f"({single / batched:.1f}x faster)"]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--dims", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    counter = PassCounter()
    for dims in args.dims:
        print("\n".join(bench(dims, args.items, args.batch_size, args.repeats, counter)),
              flush=True)


if __name__ == "__main__":
    main()
