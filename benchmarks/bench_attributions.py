"""Input attributions: onnx-cam vs Captum 0.9 on bench_core's ResNet-18 (224 x 224) and ECG
ResNet 1D (12 x 5000), batch 4, each item's class 0..3 explained (raw logits: no softmax).

- Integrated Gradients, 50 Gauss-Legendre steps, zero baseline: Captum's
  ``IntegratedGradients(model).attribute(x, target, n_steps=50, internal_batch_size=64)``
  vs ``explain(x, targets, methods=IntegratedGradients(n_steps=50), batch_size=64)`` (64
  inputs per run on both sides);
- SmoothGrad, 10 samples, stdev 0.1: ``NoiseTunnel(Saliency(model)).attribute(...,
  nt_type="smoothgrad", abs=False)`` (all 40 noisy inputs in one pass) vs ``SmoothGrad`` with
  the very same noise passed explicitly.

--float64 also compares one gradient (signed saliency) of each side with torch's in float64,
as (max |error|, ||error||_2) relative to the float64 gradient's (max |.|, ||.||_2): the max
is set by the few positions where a ReLU or max-pool decision flips in float32, on either side.
--float64-only skips the timings.

"forward bound" is the least time any ONNX Runtime implementation could take: the same number
of forward passes (rows x steps or samples) through onnx-cam's session of the plain export in
chunks of 64, with no backward at all; "most lead" is Captum's time over it, the largest
speed-up any ONNX Runtime method could show on this CPU.

One warm-up call per side (onnx-cam builds and caches its gradient session there), then the
median of ``--repeats`` interleaved timed calls (default 1). The attributions of the last
calls are compared (max |difference| / max |Captum|). Other processes on a shared machine
inflate both sides; read the ratios.

    python benchmarks/bench_attributions.py
    python benchmarks/bench_attributions.py --models ecg1d --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

from bench_core import ECGResNet1d, ResNet18, export_bytes, load, prepare  # noqa: E402

import onnx_cam  # noqa: E402
from onnx_cam.methods import IntegratedGradients, SmoothGrad  # noqa: E402
from onnx_cam.runtime import make_session  # noqa: E402

warnings.filterwarnings("ignore")
TARGETS = [0, 1, 2, 3]
SAMPLES, STDEV, STEPS, CHUNK = 10, 0.1, 50, 64


def cases(model, x, exp):
    """(method, Captum call, onnx-cam call) for one model."""
    from captum.attr import IntegratedGradients as CaptumIG
    from captum.attr import NoiseTunnel, Saliency
    torch.manual_seed(0)
    noise = torch.normal(0, torch.tensor(STDEV).repeat((len(x) * SAMPLES, *x.shape[1:])))
    xs = x.numpy()

    def captum_ig():
        return CaptumIG(model).attribute(x.clone(), target=TARGETS, n_steps=STEPS,
                                         internal_batch_size=CHUNK).detach().numpy()

    def captum_smoothgrad():
        torch.manual_seed(0)  # Captum draws the same noise as above
        return NoiseTunnel(Saliency(model)).attribute(
            x.clone(), nt_type="smoothgrad", nt_samples=SAMPLES, stdevs=STDEV, target=TARGETS,
            abs=False).detach().numpy()

    ig = IntegratedGradients(n_steps=STEPS)
    smooth = SmoothGrad(nt_samples=SAMPLES, stdevs=STDEV,
                        noise=noise.numpy().reshape(len(x), SAMPLES, *x.shape[1:]))
    return [
        (f"Integrated Gradients ({STEPS} steps)", captum_ig,
         lambda: exp.explain(xs, TARGETS, methods=ig, batch_size=CHUNK).attribution(),
         len(x) * STEPS),
        (f"SmoothGrad ({SAMPLES} samples)", captum_smoothgrad,
         lambda: exp.explain(xs, TARGETS, methods=smooth, batch_size=CHUNK).attribution(),
         len(x) * SAMPLES),
    ]


def forward_per_row(model, x, threads: int) -> float:
    """Seconds per forward pass of the plain export in onnx-cam's session, run in chunks of
    CHUNK rows (the median of three)."""
    import onnx
    proto = onnx.load_from_string(export_bytes(model, x, fold=True))
    session = make_session(proto, onnx_cam.RuntimeOptions(intra_op_threads=threads))
    chunk = np.random.default_rng(0).standard_normal((CHUNK, *x.shape[1:]), np.float32)
    session.run(None, {"input": chunk})
    times = [timed(lambda: session.run(None, {"input": chunk}))[0] for _ in range(3)]
    return statistics.median(times) / CHUNK


def float64_errors(model, x, exp) -> tuple[str, str]:
    """Errors of the signed input gradient, "max / L2" relative: (torch float32, onnx-cam)."""
    import copy

    def grad(net, inputs):
        inputs = inputs.clone().requires_grad_()
        (g,) = torch.autograd.grad(net(inputs)[range(len(TARGETS)), TARGETS].sum(), inputs)
        return g.double().numpy()

    exact = grad(copy.deepcopy(model).double(), x.double())
    ours = exp.explain(x.numpy(), TARGETS, methods=onnx_cam.methods.Saliency(absolute=False))

    def errors(got):
        err = got - exact
        return (f"{np.abs(err).max() / np.abs(exact).max():.1e} / "
                f"{np.linalg.norm(err) / np.linalg.norm(exact):.1e}")
    return errors(grad(model, x)), errors(ours.attribution())


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet18,ecg1d")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--float64", action="store_true",
                   help="also compare one input gradient of each side with float64 torch")
    p.add_argument("--float64-only", action="store_true", help="that comparison, no timings")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    specs = {"resnet18": ("ResNet-18 2D 224x224", ResNet18, (4, 3, 224, 224)),
             "ecg1d": ("ECG ResNet 1D 12x5000", ECGResNet1d, (4, 12, 5000))}
    print(f"torch {torch.__version__}, onnx-cam {onnx_cam.__version__}, {os.cpu_count()} CPUs, "
          f"threads={args.threads}, load average {load()}\n")
    print("| model | method | Captum 0.9 (s) | onnx-cam (s) | speed-up | forward bound (s) "
          "| most lead | max rel. diff |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for key in args.models.split(","):
        title, build, shape = specs[key]
        torch.manual_seed(0)
        model = prepare(build(), (8, *shape[1:]), 0)
        x = torch.randn(shape)
        exp = onnx_cam.Explainer(model, example_input=x, runtime=onnx_cam.RuntimeOptions(
            intra_op_threads=args.threads))
        per_row = 0.0 if args.float64_only else forward_per_row(model, x, args.threads)
        for name, reference, ours, rows in [] if args.float64_only else cases(model, x, exp):
            reference(), ours()  # warm-up: onnx-cam builds its gradient session here
            theirs, mine = [], []
            for _ in range(args.repeats):
                t, ref = timed(reference)
                theirs.append(t)
                t, got = timed(ours)
                mine.append(t)
            a, b = statistics.median(theirs), statistics.median(mine)
            diff = float(np.abs(got - ref).max() / np.abs(ref).max())
            bound = per_row * rows
            print(f"| {title} | {name} | {a:.2f} | {b:.2f} | {a / b:.2f}x | {bound:.2f} | "
                  f"{a / bound:.2f}x | {diff:.1e} |", flush=True)
        if args.float64 or args.float64_only:
            torch_error, our_error = float64_errors(model, x, exp)
            print(f"| {title} | gradient vs float64 torch (max / L2) | {torch_error} | "
                  f"{our_error} | | | | |", flush=True)
    print(f"\nload average {load()}")


if __name__ == "__main__":
    main()
