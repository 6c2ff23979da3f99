"""Per-method benchmark: onnx-cam vs pytorch-grad-cam's procedure for each CAM method.

pytorch-grad-cam itself cannot be installed beside torch 2.13 (it imports torchvision), so its
procedure for each method is written here in torch, on bench_core's models and hooks:

- **gradient methods** (gradcam, hirescam, gradcam++, xgradcam, layercam, gradcamelementwise,
  eigengradcam): ``BaseCAM.forward`` -- a forward hook keeps the layer's output, a tensor hook
  its gradient, ``backward()`` of the summed target logits with parameter gradients ON, the
  method's weights / element-wise map as in pytorch-grad-cam (EigenGradCAM: its
  ``get_2d_projection``, a float32 numpy SVD with ``full_matrices=True``), ReLU,
  ``F.interpolate`` (``align_corners=False``) to the input size and per-item min-max, as
  bench_core's ``HookGradCAM``;
- **eigencam**: the same forward (grad mode, no backward) and ``get_2d_projection``;
- **scorecam**: ``ScoreCAM.get_cam_weights`` -- the activations upsampled to the input size
  (bilinear / linear, ``align_corners=True``), min-max scaled per channel, multiplied into the
  input, and the FULL model run under ``no_grad`` on batches of 16 masked inputs per item;
  weights = softmax over channels of the target logit;
- **ablationcam**: ``AblationCAM.get_cam_weights`` -- a second forward for the original
  scores, then the target layer is swapped for pytorch-grad-cam's ``AblationLayer`` (it
  ignores its input and returns the cached activations with one channel per row ablated), and
  per item the FULL model runs on batches of 32 copies of the item: every layer below the
  target layer is recomputed, the target layer itself is not (as in pytorch-grad-cam's
  ``replace_layer_recursive``; a forward hook would also recompute it). Weights =
  (original - ablated) / original.

onnx-cam: ``Explainer.explain(x, targets=None, layers="layer4", methods=m, batch_size=b)``
end to end (sessions cached by a warm-up call). Its Score-CAM batches the masked inputs
through ONNX Runtime (batch 16, as the baseline); its Ablation-CAM runs only the graph above
the layer on the ablated activations (batch 32, as the baseline).

Both sides explain each item's predicted class (the models have no softmax: raw logits). The
CAMs of the last timed calls are compared: max abs difference of the normalised maps, and how
many items both sides explained with the same class. EigenCAM / EigenGradCAM: the principal
component's sign is arbitrary; onnx-cam orients it to correlate positively with the channel
sum, and the baseline here is oriented the same way before its ReLU (pytorch-grad-cam keeps
LAPACK's sign).

Timing: gradient methods and EigenCAM on a batch of 16 -- one warm-up call per side, then the
median of ``--repeats`` interleaved rounds. Score-CAM / Ablation-CAM cost one forward pass per
channel per item, so they run on ``--items`` items (default 2), one item per call with the two
sides alternating item by item (their runs are long; drifting load then hits both alike), for
``--perturbation-repeats`` rounds (default 1). Their warm-up is one full call on one item for
onnx-cam (it builds the probe session) and only the first batch of forward passes for the
baseline (torch has no per-call set-up to absorb; the full loop would add minutes).
Milliseconds per item are given for every row.

    python benchmarks/bench_methods.py             # full sizes (~8 min on 2 idle cores)
    python benchmarks/bench_methods.py --quick     # small sizes (~2 min)
    python benchmarks/bench_methods.py --models ecg1d --methods gradcam,scorecam --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from bench_core import ECGResNet1d, HookGradCAM, ResNet18, load, make_explainer, prepare, timed
from torch import nn

import onnx_cam

GRADIENT_METHODS = ["gradcam", "hirescam", "gradcam++", "xgradcam", "layercam",
                    "gradcamelementwise", "eigengradcam"]
PERTURBATION_METHODS = ["scorecam", "ablationcam"]
METHODS = [*GRADIENT_METHODS, "eigencam", *PERTURBATION_METHODS]
PERTURBATION_BATCH = {"scorecam": 16, "ablationcam": 32}  # pytorch-grad-cam's defaults
MODES = HookGradCAM.MODES


# ============================================================================ baseline maths
def _spatial_sum(t: torch.Tensor) -> torch.Tensor:
    return t.sum(dim=tuple(range(2, t.dim())), keepdim=True)


def _gradcam_pp_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    g2 = g * g
    aij = g2 / (2 * g2 + _spatial_sum(a) * g2 * g + 1e-6)
    aij = torch.where(g != 0, aij, torch.zeros_like(aij))
    return _spatial_sum(F.relu(g) * aij)


def projection(maps: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's get_2d_projection (float32 numpy SVD, full_matrices=True), with the
    component oriented to correlate positively with the channel sum, as onnx-cam does."""
    out = []
    for m in np.nan_to_num(maps):
        flat = m.reshape(m.shape[0], -1).T
        flat = flat - flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat, full_matrices=True)
        proj = flat @ vt[0]
        if proj @ flat.sum(axis=1) < 0:
            proj = -proj
        out.append(proj.reshape(m.shape[1:]))
    return np.float32(out)


RAW = {  # (activations, gradients) -> the map before ReLU, as pytorch-grad-cam computes it
    "gradcam": lambda a, g: (g.mean(dim=tuple(range(2, g.dim())), keepdim=True) * a).sum(1),
    "hirescam": lambda a, g: (g * a).sum(1),
    "gradcam++": lambda a, g: (_gradcam_pp_weights(a, g) * a).sum(1),
    "xgradcam": lambda a, g: (_spatial_sum(g * a / (_spatial_sum(a) + 1e-7)) * a).sum(1),
    "layercam": lambda a, g: (F.relu(g) * a).sum(1),
    "gradcamelementwise": lambda a, g: F.relu(g * a).sum(1),
    "eigengradcam": lambda a, g: torch.from_numpy(projection((g * a).numpy())),
    "eigencam": lambda a, g: torch.from_numpy(projection(a.numpy())),
}


def resize_minmax(raw: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """ReLU, F.interpolate to the input size (half-pixel centres), per-item min-max."""
    cam = F.interpolate(F.relu(raw)[:, None], size=size, mode=MODES[len(size)],
                        align_corners=False)[:, 0]
    flat = cam.reshape(len(cam), -1)
    shape = (-1, *[1] * len(size))
    mn = flat.min(1).values.view(shape)
    span = flat.max(1).values.view(shape) - mn
    return torch.where(span > 0, (cam - mn) / span.clamp_min(1e-30), torch.zeros_like(cam))


def per_channel(w: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape + (1,) * (like.dim() - 2))


# ============================================================================ baselines
class TorchCAM(HookGradCAM):
    """pytorch-grad-cam's BaseCAM.forward for one gradient method or EigenCAM, on HookGradCAM's
    hooks: forward in grad mode, backward() only for gradient methods."""

    def __init__(self, model: nn.Module, layer: str, method: str):
        super().__init__(model, model.get_submodule(layer))
        self.method = method

    def __call__(self, x, targets=None, chunks=None):
        out = self.model(x)
        if targets is None:
            targets = out.argmax(1)
        if self.method != "eigencam":
            self.model.zero_grad()
            out.gather(1, targets[:, None]).sum().backward()
        raw = RAW[self.method](self.acts, self.grads)
        return resize_minmax(raw, tuple(x.shape[2:])), targets


class TorchScoreCAM(HookGradCAM):
    """pytorch-grad-cam's ScoreCAM: forward with hooks, then the full model on batches of
    masked inputs under no_grad. `chunks` limits each item to its first batches (warm-up)."""

    def __init__(self, model: nn.Module, layer: str, batch_size: int = 16):
        super().__init__(model, model.get_submodule(layer))
        self.batch_size = batch_size

    def __call__(self, x, targets=None, chunks=None):
        out = self.model(x)
        if targets is None:
            targets = out.argmax(1)
        a = self.acts
        n, c = a.shape[:2]
        with torch.no_grad():
            up = F.interpolate(a, size=x.shape[2:], mode=MODES[x.dim() - 2], align_corners=True)
            flat = up.reshape(n, c, -1)
            mins = per_channel(flat.min(-1).values, up)
            maxs = per_channel(flat.max(-1).values, up)
            up = (up - mins) / (maxs - mins + 1e-8)
            masked = x[:, None] * up[:, :, None]           # (n, C, C_in, *spatial)
            scores = torch.zeros(n, c)
            stop = c if chunks is None else min(c, chunks * self.batch_size)
            for i in range(n):
                for start in range(0, stop, self.batch_size):
                    batch = masked[i, start:start + self.batch_size]
                    scores[i, start:start + len(batch)] = self.model(batch)[:, targets[i]]
            weights = torch.softmax(scores, dim=-1)
        raw = (per_channel(weights, a) * a).sum(1)
        return resize_minmax(raw, tuple(x.shape[2:])), targets


class AblationLayer(nn.Module):
    """pytorch-grad-cam's AblationLayer: ignores its input; row i of the cached activations
    gets channel indices[i] set to 0 (or to the minimum - 1e7 if the minimum is not 0)."""

    def __init__(self):
        super().__init__()
        self.activations, self.indices = None, None

    def forward(self, x):
        output = self.activations
        for i in range(output.size(0)):
            if torch.min(output) == 0:
                output[i, self.indices[i]] = 0
            else:
                output[i, self.indices[i]] = torch.min(output) - 1e7
        return output


class TorchAblationCAM(HookGradCAM):
    """pytorch-grad-cam's AblationCAM: forward with hooks, a second forward for the original
    scores, then per item the full model on batches of copies with the target layer swapped
    for an AblationLayer. `chunks` limits each item to its first batches (warm-up)."""

    def __init__(self, model: nn.Module, layer: str, batch_size: int = 32):
        super().__init__(model, model.get_submodule(layer))
        self.layer, self.batch_size = layer, batch_size

    def _swap(self, module: nn.Module) -> nn.Module:
        parent, _, attr = self.layer.rpartition(".")
        owner = self.model.get_submodule(parent) if parent else self.model
        old = getattr(owner, attr)
        setattr(owner, attr, module)
        return old

    def __call__(self, x, targets=None, chunks=None):
        out = self.model(x)
        if targets is None:
            targets = out.argmax(1)
        a = self.acts
        with torch.no_grad():
            original = self.model(x).gather(1, targets[:, None])[:, 0]
        cached = self.acts
        n, c = a.shape[:2]
        ablated = original[:, None].repeat(1, c)          # channels not ablated keep the score
        stop = c if chunks is None else min(c, chunks * self.batch_size)
        ablation = AblationLayer()
        layer = self._swap(ablation)
        try:
            with torch.no_grad():
                for i in range(n):
                    copies = x[i:i + 1].repeat(self.batch_size, *[1] * (x.dim() - 1))
                    for start in range(0, stop, self.batch_size):
                        rows = min(self.batch_size, c - start)
                        ablation.activations = cached[i:i + 1].clone().repeat(
                            rows, *[1] * (cached.dim() - 1))
                        ablation.indices = range(start, start + rows)
                        ablated[i, start:start + rows] = self.model(copies[:rows])[:, targets[i]]
        finally:
            self._swap(layer)
        weights = (original[:, None] - ablated) / original[:, None]
        raw = (per_channel(weights, a) * a).sum(1)
        return resize_minmax(raw, tuple(x.shape[2:])), targets


BASELINES = {"scorecam": TorchScoreCAM, "ablationcam": TorchAblationCAM}


# ============================================================================ benchmark
def bench_method(model, exp, layer, x, method, args):
    """One row: warm-up, interleaved timed rounds, then the CAMs of the last round compared.

    Perturbation methods alternate the two sides item by item (each call explains one item),
    so that load drifting over their long runs hits both sides alike."""
    perturb = method in PERTURBATION_METHODS
    if perturb:
        batch = PERTURBATION_BATCH[method]
        base = BASELINES[method](model, layer, batch)
        repeats = args.perturbation_repeats
        parts = [slice(i, i + 1) for i in range(len(x))]
    else:
        batch = len(x)
        base = TorchCAM(model, layer, method)
        repeats = args.repeats
        parts = [slice(None)]
    x_np = x.numpy().copy()

    def run_onnx(xb):
        return exp.explain(xb, targets=None, layers=layer, methods=method, batch_size=batch)

    try:
        base(x[parts[0]], chunks=1 if perturb else None)
        run_onnx(x_np[parts[0]])
        ms_base, ms_onnx = [], []
        for _ in range(repeats):
            ms_base.append(0.0)
            ms_onnx.append(0.0)
            cams_t, targets_t, cams_o, targets_o = [], [], [], []
            for part in parts:
                ms, (cam, targets) = timed(partial(base, x[part]))
                ms_base[-1] += ms
                cams_t.append(cam.numpy())
                targets_t.append(targets.numpy())
                ms, res = timed(partial(run_onnx, x_np[part]))
                ms_onnx[-1] += ms
                cams_o.append(res.cam(method, layer))
                targets_o.append(res.targets)
    finally:
        base.close()
    diff = float(np.abs(np.concatenate(cams_o) - np.concatenate(cams_t)).max())
    agree = int((np.concatenate(targets_t) == np.concatenate(targets_o)).sum())
    b, o = statistics.median(ms_base), statistics.median(ms_onnx)
    label = f"{len(x)} x {batch}/fwd" if perturb else str(len(x))
    return {"method": method, "batch": label, "base": b, "onnx": o, "base_item": b / len(x),
            "onnx_item": o / len(x), "speedup": b / o, "diff": diff,
            "agree": f"{agree}/{len(x)}", "repeats": repeats}


def bench_model(title, model, x, layer, methods, args):
    exp, names, note = make_explainer(model, x, args.threads, [layer])
    if note:
        print(f"- {note}")
    name = names[layer]
    items = x[:args.items]
    rows = []
    for method in methods:
        t0 = time.perf_counter()
        row = bench_method(model, exp, name, items if method in PERTURBATION_METHODS else x,
                           method, args)
        row["model"] = title
        rows.append(row)
        print(f"  {title} / {method}: {row['base']:.0f} ms vs {row['onnx']:.0f} ms "
              f"({time.perf_counter() - t0:.0f} s incl. warm-up; load {load()})",
              file=sys.stderr, flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smaller inputs and batches (112x112 / 2500 samples, batch 4, 1 item)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed rounds for gradient methods and EigenCAM (default 3)")
    p.add_argument("--perturbation-repeats", type=int, default=1,
                   help="timed rounds for Score-CAM and Ablation-CAM (default 1)")
    p.add_argument("--items", type=int, default=None,
                   help="items explained by Score-CAM / Ablation-CAM (default 2; 1 with --quick)")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="threads for torch and onnx-cam's ONNX Runtime (default: all cores)")
    p.add_argument("--models", default="resnet18,ecg1d",
                   help="comma-separated subset of resnet18,ecg1d")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    q = args.quick
    if args.items is None:
        args.items = 1 if q else 2
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {METHODS}")

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    specs = {
        "resnet18": ("ResNet-18 2D", ResNet18, (4, 3, 112, 112) if q else (16, 3, 224, 224)),
        "ecg1d": ("ECG ResNet 1D", ECGResNet1d, (4, 12, 2500) if q else (16, 12, 5000)),
    }
    print(f"torch {torch.__version__}, onnx-cam {onnx_cam.__version__}, {os.cpu_count()} CPUs, "
          f"threads={args.threads}, {'quick' if q else 'full'} mode; load average {load()}\n")
    t0 = time.perf_counter()
    rows, shapes = [], []
    for key in args.models.split(","):
        title, build, shape = specs[key]
        torch.manual_seed(args.seed)
        model = prepare(build(), (max(shape[0], 8), *shape[1:]), args.seed)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed + 1))
        shapes.append(f"{title}: input {tuple(shape)}, layer4")
        rows += bench_model(title, model, x, "layer4", methods, args)

    print(f"### CAM methods at layer4: pytorch-grad-cam's procedure in torch vs onnx-cam "
          f"({args.threads} threads; median of {args.repeats} rounds, Score-/Ablation-CAM "
          f"{args.perturbation_repeats}, after a warm-up)\n")
    print("| model | method | items x batch | baseline (ms) | onnx-cam (ms) | baseline ms/item "
          "| onnx-cam ms/item | speed-up | max abs diff | same class |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['method']} | {r['batch']} | {r['base']:.0f} | {r['onnx']:.0f} "
              f"| {r['base_item']:.1f} | {r['onnx_item']:.1f} | {r['speedup']:.2f}x "
              f"| {r['diff']:.1e} | {r['agree']} |")
    print()
    for s in shapes:
        print(f"- {s}")
    print("- speed-up = baseline / onnx-cam; max abs diff between the two normalised CAMs "
          "(EigenCAM / EigenGradCAM: both oriented to correlate with the channel sum)")
    print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s; load average {load()}")


if __name__ == "__main__":
    main()
