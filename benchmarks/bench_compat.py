"""get_cam time: SignalGrad-CAM 2.2.0 vs onnx_cam.compat (the same calls, the same model).

A small ECG CNN (12 leads, four Conv1d + BatchNorm + ReLU stages, global average pooling, a
5-class softmax head; random weights, seeded, eval mode) explains a batch of ECG-like signals
(12 x 5000: a heartbeat-shaped pulse train per lead plus noise) with ``softmax_final=True``.

Both sides run the same ``get_cam`` call once (a warm-up, and the maps compared), then the
median of ``--repeats`` runs of the facade and ``--their-repeats`` of SignalGrad-CAM is
printed. SignalGrad-CAM runs one forward pass per (explainer, class, layer, foil) and one
backward pass per item of it; the facade runs one ONNX Runtime pass (forward and the
gradient subgraph) for everything.

"arrays only": SignalGrad-CAM's drawing is switched off (its ``__display_output`` replaced
by a no-op: it would draw and keep a figure per item, and under numpy >= 2.4 it
fails in its colour-bar code); the facade draws nothing unless given ``results_dir_path``.
"with drawing": both save their per-item figures to a temporary folder (SignalGrad-CAM's
colour-bar code is fed one-dimensional score ranges so that it runs under numpy 2.4; its
figures are 500 dpi PNGs, the facade's 110 dpi). The facade's first call (the conversion to
ONNX included) is timed separately. The maps of both are compared: SignalGrad-CAM's 1D maps
are computed with OpenCV 4's reading of 1-D arrays (OpenCV 5 reads them as rows and
flattens every 1D map to a constant).

"Notebook loop": a cell that builds a builder and runs one get_cam, run twice (the model
unchanged), as a notebook user re-runs it; the facade with its export cache (the second run
reuses the first run's ONNX export) and with the cache emptied before each run (every run
exports, as before the cache existed).

    python benchmarks/bench_compat.py                  # 16 and 64 items (~5 min)
    python benchmarks/bench_compat.py --items 8 16 --draw-items 8   # ~1 min
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from onnx_cam.compat import TorchCamBuilder  # noqa: E402
from onnx_cam.compat.cache import export_cache  # noqa: E402

warnings.filterwarnings("ignore")
CLASSES = ["normal", "af", "other", "noisy", "pvc"]


class EcgCnn(nn.Module):
    def __init__(self, leads: int = 12, widths=(32, 64, 128, 128), classes: int = 5):
        super().__init__()
        stages, cin = [], leads
        for i, width in enumerate(widths):
            stages.append(nn.Sequential(
                nn.Conv1d(cin, width, 7, stride=2 if i < 3 else 1, padding=3),
                nn.BatchNorm1d(width), nn.ReLU()))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        return torch.softmax(self.head(self.stages(x).mean(-1)), dim=1)


def ecg_like(n: int, leads: int = 12, samples: int = 5000, fs: float = 500.0,
             seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / fs
    out = []
    for _ in range(n):
        rate = rng.uniform(0.7, 1.4)  # beats per second
        phase = (t * rate) % 1.0
        beat = np.exp(-((phase - 0.3) / 0.012) ** 2) - 0.2 * np.exp(-((phase - 0.6) / 0.05) ** 2)
        gains = rng.uniform(0.3, 1.5, (leads, 1))
        signal = gains * beat + 0.05 * rng.standard_normal((leads, samples))
        out.append(signal.astype(np.float32))
    return out


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextlib.contextmanager
def signal_grad_cam(drawing: bool):
    """signal_grad_cam with its drawing off, or on and runnable under numpy >= 2.4; 1-D
    arrays resized as OpenCV 4 did."""
    import matplotlib

    matplotlib.use("Agg")
    from signal_grad_cam import cam_builder

    base = cam_builder.CamBuilder
    saved = {name: getattr(base, name) for name in
             ("_CamBuilder__display_output", "_CamBuilder__set_colorbar")}
    resize = cam_builder.cv2.resize
    cam_builder.cv2.resize = lambda a, size, *rest, **kw: resize(
        a[:, None] if a.ndim == 1 else a, size, *rest, **kw)
    if not drawing:
        base._CamBuilder__display_output = lambda self, *args, **kwargs: None
    else:
        colorbar = saved["_CamBuilder__set_colorbar"]

        def flat_ranges(bar_ranges=None, batch_idx=None, norm=None, ax=None):
            flat = None if bar_ranges is None else tuple(np.ravel(r) for r in bar_ranges)
            return colorbar(flat, batch_idx, norm, ax)

        base._CamBuilder__set_colorbar = staticmethod(flat_ranges)
    try:
        yield cam_builder
    finally:
        for name, value in saved.items():
            setattr(base, name, value)
        cam_builder.cv2.resize = resize


def compare(ours_out, theirs_out) -> str:
    """Largest map difference (0..255 levels) and relative score-range difference."""
    maps = max(int(np.abs(a.astype(int) - b.astype(int)).max())
               for key in theirs_out[0] for a, b in zip(ours_out[0][key], theirs_out[0][key]))
    ranges = max(float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))
                 for key in theirs_out[2] for a, b in zip(ours_out[2][key], theirs_out[2][key]))
    return f"{maps} / 255, ranges {ranges:.0e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[16, 64],
                        help="batch sizes")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the facade")
    parser.add_argument("--their-repeats", type=int, default=1,
                        help="runs of SignalGrad-CAM (minutes each at 64 items)")
    parser.add_argument("--draw-items", type=int, default=16,
                        help="items in the 'with drawing' line (0: skip it)")
    parser.add_argument("--notebook-items", type=int, nargs="+", default=[1, 16],
                        help="items per get_cam in the notebook loop")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = EcgCnn().eval()
    data = ecg_like(max(args.items))
    labels = [i % len(CLASSES) for i in range(len(data))]
    one = dict(target_classes=1, explainer_types="Grad-CAM")
    four = dict(target_classes=[0, 1], explainer_types=["Grad-CAM", "HiResCAM"])
    common = dict(target_layers="stages.3.0", softmax_final=True, data_sampling_freq=500.0)

    import matplotlib.pyplot as plt
    import signal_grad_cam as sgc

    with contextlib.redirect_stdout(io.StringIO()):  # its constructor prints a banner
        theirs = sgc.TorchCamBuilder(model, class_names=CLASSES)
    ours = TorchCamBuilder(model, class_names=CLASSES)
    start = time.perf_counter()
    ours.get_cam(data[:1], labels[:1], **one, **common)
    first_call = time.perf_counter() - start

    def run(builder, n, call, folder=None):
        def go():
            out = builder.get_cam(data[:n], labels[:n], **call, **common,
                                  results_dir_path=folder)
            plt.close("all")  # SignalGrad-CAM leaves its figures open
            return out
        return go

    rows = []
    settings = [(n, "1 class, Grad-CAM", one) for n in args.items]
    settings.append((min(args.items), "2 classes x 2 explainers", four))
    for n, name, call in settings:
        with signal_grad_cam(drawing=False), contextlib.redirect_stdout(io.StringIO()):
            theirs_out = run(theirs, n, call)()
            t_theirs = median_time(run(theirs, n, call), args.their_repeats)
        ours_out = run(ours, n, call)()
        t_ours = median_time(run(ours, n, call), args.repeats)
        rows.append((f"{n} x 12 x 5000, {name}, arrays only", t_theirs, t_ours,
                     compare(ours_out, theirs_out)))

    if args.draw_items:
        n = args.draw_items
        with tempfile.TemporaryDirectory() as folder:
            with signal_grad_cam(drawing=True), contextlib.redirect_stdout(io.StringIO()):
                t_theirs = median_time(run(theirs, n, one, folder), args.their_repeats)
            t_ours = median_time(run(ours, n, one, folder), args.repeats)
        rows.append((f"{n} x 12 x 5000, 1 class, with drawing (a PNG per item)", t_theirs,
                     t_ours, "-"))

    notebook = [(n, *notebook_loop(sgc, model, data[:n], labels[:n], {**one, **common}))
                for n in args.notebook_items]

    print(f"\nget_cam time, SignalGrad-CAM 2.2.0 median of {args.their_repeats}, the facade "
          f"median of {args.repeats} (torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads). The facade's first call, the ONNX export included: {first_call:.2f} s\n")
    print("| call | SignalGrad-CAM (s) | onnx_cam.compat (s) | speed-up | max difference |")
    print("|---|---:|---:|---:|---|")
    for name, t_theirs, t_ours, diff in rows:
        print(f"| {name} | {t_theirs:.2f} | {t_ours:.3f} | {t_theirs / t_ours:.0f}x | {diff} |")
    print("\nNotebook loop: build a builder + one get_cam (1 class, Grad-CAM), run twice\n")
    print("| items | run | SignalGrad-CAM (s) | facade, no export cache (s) | "
          "facade, export cache (s) |")
    print("|---:|---:|---:|---:|---:|")
    for n, theirs_times, uncached, cached in notebook:
        for run_index in range(2):
            print(f"| {n} | {run_index + 1} | {theirs_times[run_index]:.2f} | "
                  f"{uncached[run_index]:.2f} | {cached[run_index]:.3f} |")


def notebook_loop(sgc, model, data, labels, call) -> tuple[list, list, list]:
    """Seconds of each of two runs of "builder = Builder(model); builder.get_cam(...)":
    SignalGrad-CAM, the facade with the export cache emptied before each run, and the
    facade with the cache (empty before the first run)."""
    def runs(make_builder, before_each=None) -> list[float]:
        times = []
        for _ in range(2):
            if before_each is not None:
                before_each()
            start = time.perf_counter()
            make_builder().get_cam(data, labels, **call)
            times.append(time.perf_counter() - start)
        return times

    with signal_grad_cam(drawing=False), contextlib.redirect_stdout(io.StringIO()):
        theirs = runs(lambda: sgc.TorchCamBuilder(model, class_names=CLASSES))
    uncached = runs(lambda: TorchCamBuilder(model, class_names=CLASSES), export_cache.clear)
    export_cache.clear()
    cached = runs(lambda: TorchCamBuilder(model, class_names=CLASSES))
    return theirs, uncached, cached


if __name__ == "__main__":
    main()
