"""Cost of differentiating through Resize (the MatMul-per-axis gradient), in one run.

Models: an FPN-style 2D decoder (nearest x2, bilinear x2, bilinear align_corners to a
non-integer size) at 128 px (batch 8) and 384 px (batch 4, long axes: the Gather form) and
its 3D counterpart (trilinear, batch 8), random weights. For each,
after warm-up, the median of --repeats interleaved rounds of:

(a) ORT inference of the plain export (the floor);
(b) onnx-cam: ``activations_and_gradients`` at the stem (below every Resize), so every
    Resize is differentiated;
(c) torch: forward + autograd backward to the stem's output (no parameter gradients).

    python benchmarks/bench_resize.py              # ~1 min on 2 busy cores
    python benchmarks/bench_resize.py --repeats 9
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
import warnings

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import onnx_cam  # noqa: E402

warnings.filterwarnings("ignore")


class Decoder(nn.Module):
    def __init__(self, dim: int, c: int = 32):
        super().__init__()
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[dim]
        self.linear = {2: "bilinear", 3: "trilinear"}[dim]
        self.stem = nn.Sequential(conv(3, c, 3, 2, 1), nn.ReLU())
        self.down = nn.Sequential(conv(c, c, 3, 2, 1), nn.ReLU(), conv(c, c, 3, 2, 1), nn.ReLU())
        self.fuse1 = nn.Sequential(conv(c, c, 3, 1, 1), nn.ReLU())
        self.fuse2 = nn.Sequential(conv(c, c, 3, 1, 1), nn.ReLU())
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        s = self.stem(x)
        d = self.down(s)
        u = self.fuse1(F.interpolate(d, scale_factor=2, mode="nearest"))
        u = self.fuse2(F.interpolate(u, scale_factor=2, mode=self.linear) + s)
        size = [int(n * 1.5) + 1 for n in u.shape[2:]]
        u = F.interpolate(u, size=size, mode=self.linear, align_corners=True)
        return self.head(u.mean(tuple(range(2, u.dim()))))


def median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def run_case(name, net, shape, repeats):
    net.eval()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.from_numpy(x),), buf, dynamo=False, opset_version=17,
                      input_names=["x"], dynamic_axes={"x": {0: "N"}})
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    exp = onnx_cam.Explainer(net, example_input=torch.from_numpy(x[:2]))
    targets = list(range(len(x)))
    for p in net.parameters():
        p.requires_grad_(False)

    def plain():
        session.run(None, {"x": x})

    def ours():
        exp.activations_and_gradients(x, targets=targets, layers=["stem"])

    def reference():
        kept = {}
        handle = net.stem.register_forward_hook(lambda m, i, o: kept.setdefault("a", o))
        xt = torch.from_numpy(x).requires_grad_(True)  # so the stem output has a graph
        logits = net(xt)
        torch.autograd.grad(logits[torch.arange(len(x)), targets].sum(), kept["a"])
        handle.remove()

    for fn in (plain, ours, reference):  # warm-up
        fn()
    a, b, c = (median_ms(fn, repeats) for fn in (plain, ours, reference))
    print(f"{name:<12} {a:>15.1f} ms {b:>14.1f} ms {c:>15.1f} ms {b / a:>6.2f} {b / c:>6.2f}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    print(f"{'model':<12} {'(a) ORT inference':>18} {'(b) onnx-cam A+G':>17} "
          f"{'(c) torch fwd+bwd':>18} {'b/a':>6} {'b/c':>6}")
    run_case("2D decoder", Decoder(2), (8, 3, 128, 128), args.repeats)
    run_case("2D, 384 px", Decoder(2), (4, 3, 384, 384), args.repeats)
    run_case("3D decoder", Decoder(3), (8, 3, 32, 32, 32), args.repeats)


if __name__ == "__main__":
    main()
