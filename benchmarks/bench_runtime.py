"""ONNX Runtime settings on onnx-cam's work: thread spinning on whole calls, and, on one
CAM session, I/O binding and the memory arena.

Spinning, `RuntimeOptions(spinning=...)`: "never": ONNX Runtime's threads sleep as soon as
they find no work; "during runs": they spin while a run is in progress and stop when it ends
(`session.force_spinning_stop`); "always": ONNX Runtime's default, they also spin for a
while after each run, on the cores the CAM kernels (and everything else in the process)
need next. One Explainer per setting on bench_core's models, all in this process; per call,
the median of --repeats interleaved rounds (every setting in every round, 0.2 s apart, so
that threads spinning after one call do not slow the next). Ratios are against "never"; < 1
is faster.

Session (--calls session): onnx-cam's Grad-CAM session of ResNet-18 at layer2 and layer1 run
as onnx-cam runs it (`session.run`, outputs copied into new arrays), with I/O binding into
arrays allocated once, and in a session without ONNX Runtime's CPU memory arena.

    python benchmarks/bench_runtime.py                      # ~12 min on 2 cores
    python benchmarks/bench_runtime.py --calls gradcam,session --repeats 9
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from functools import partial

import numpy as np
import onnxruntime as ort
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

from bench_core import (  # noqa: E402
    CNN3d,
    ECGResNet1d,
    ResNet18,
    interleaved,
    load,
    prepare,
)

import onnx_cam  # noqa: E402
from onnx_cam.methods import IntegratedGradients  # noqa: E402

warnings.filterwarnings("ignore")
SETTINGS = ("never", "during runs", "always")
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
    p.add_argument("--calls", default="gradcam,ig,session",
                   help="comma-separated: gradcam, ig, session")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    kinds = args.calls.split(",")
    calls = [c for kind in kinds if kind != "session" for c in CALLS[kind]]
    print(f"onnx-cam {onnx_cam.__version__}, {args.threads} threads, median of {args.repeats} "
          f"interleaved rounds; load average {load()}")
    if calls:
        spinning(calls, args)
    if "session" in kinds:
        session_options(args)
    print(f"\nload average {load()}")


def spinning(calls, args):
    """One row per call: its median time under each spinning setting."""
    print("\n| model | call | " + " | ".join(f"{s} (s)" for s in SETTINGS)
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
            med = interleaved({s: partial(call, explainers[s], x) for s in SETTINGS},
                              args.repeats, rotate=True)
            print(f"| {title} {'x'.join(map(str, shape))} | {label} | "
                  + " | ".join(f"{med[s]:.3f}" for s in SETTINGS) + " | "
                  + " | ".join(f"{med[s] / med['never']:.2f}" for s in SETTINGS[1:]) + " |",
                  flush=True)


def session_options(args):
    """One CAM session's run: as onnx-cam runs it, with I/O binding, without the arena."""
    title, build, shape = MODELS["resnet18"]
    torch.manual_seed(0)
    model = prepare(build(), shape, 0)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    exp = onnx_cam.Explainer(model, example_input=x, runtime=onnx_cam.RuntimeOptions(
        intra_op_threads=args.threads))
    x = x.numpy()
    print(f"\n| {title} {'x'.join(map(str, shape))} CAM session | run (s) | I/O binding (s) "
          "| no memory arena (s) | I/O binding / run | no arena / run | outputs (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for layer in ("layer2", "layer1"):
        med, megabytes = session_row(exp, x, layer, args)
        print(f"| {layer} | {med['run']:.3f} | {med['binding']:.3f} | {med['no arena']:.3f} "
              f"| {med['binding'] / med['run']:.3f} | {med['no arena'] / med['run']:.3f} "
              f"| {megabytes:.1f} |", flush=True)


def session_row(exp, x, layer, args):
    """Median seconds of the three ways to run the CAM session at `layer`, output MB."""
    exp.explain(x, layers=layer)  # builds and caches the session
    tensor = exp.model.resolve_layer(layer).tensor
    cam_model, session = exp._sessions[next(k for k in exp._sessions if k[0] == (tensor,))]
    names = [cam_model.score_name, *cam_model.activation_names, *cam_model.gradient_names]
    feeds = {cam_model.input_name: x}
    outputs = [np.empty_like(o) for o in session.run(names, feeds)]
    binding = session.io_binding()
    binding.bind_cpu_input(cam_model.input_name, x)
    for name, out in zip(names, outputs):
        binding.bind_output(name, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.enable_cpu_mem_arena = args.threads, False
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    no_arena = ort.InferenceSession(cam_model.proto.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
    sides = {"run": lambda: session.run(names, feeds),
             "binding": lambda: session.run_with_iobinding(binding),
             "no arena": lambda: no_arena.run(names, feeds)}
    for side in sides.values():
        side()
    return interleaved(sides, args.repeats), sum(o.nbytes for o in outputs) / 1e6


if __name__ == "__main__":
    main()
