"""End-to-end benchmark: onnx-cam vs hook-based torch Grad-CAM vs plain ONNX Runtime inference.

For each (model, layer) and after warm-up, the median of ``--repeats`` interleaved rounds of:

(a) **torch hooks** -- Grad-CAM as pytorch-grad-cam computes it: a forward hook keeps the
    layer's output, a tensor hook keeps its gradient, ``backward()`` of the sum of the target
    logits with parameter gradients ON (like a normal model), then channel weights = spatial
    mean of the gradient, weighted sum, ReLU, ``F.interpolate`` (linear / bilinear / trilinear,
    ``align_corners=False``) to the input size and per-item min-max -- all in torch;
(b) **ORT inference** -- a plain export (``do_constant_folding=True``) run by an
    ``InferenceSession`` with default options: the floor;
(c) **onnx-cam** -- ``Explainer.explain(x, targets=None, layers=..., methods="gradcam")`` end
    to end (session cached: warmed up once first).

Then the split of (c): the rewritten model's ``session.run`` alone, the numba kernels alone
(Grad-CAM raw map + fused resize / normalise on the arrays that run returns), and what is
left (Python / copies). ``activations_and_gradients`` is timed too (session run + batching).

The CAMs of (a), computed for the classes onnx-cam explained, are compared with onnx-cam's:
the maximum absolute difference is printed. These models have no softmax, so both explain the
raw logits.

Random weights, seeded; BatchNorm running statistics are calibrated on random batches (so
they are non-trivial and activations stay in range), affine parameters randomised, then
every model is put in eval mode.

    python benchmarks/bench_core.py            # full sizes (~4 min on 2 cores)
    python benchmarks/bench_core.py --quick    # small sizes, 3 repeats
    python benchmarks/bench_core.py --profile  # also per-op-type ORT profile of (c)'s run
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import onnx_cam  # noqa: E402
from onnx_cam import kernels  # noqa: E402
from onnx_cam.methods import get_method  # noqa: E402

warnings.filterwarnings("ignore")


# ============================================================================ models
class BasicBlock(nn.Module):
    """The torchvision BasicBlock, for 1D / 2D / 3D."""

    def __init__(self, dim: int, cin: int, cout: int, stride: int = 1, k: int = 3):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim]
        bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dim]
        self.conv1 = conv(cin, cout, k, stride, k // 2, bias=False)
        self.bn1 = bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv(cout, cout, k, 1, k // 2, bias=False)
        self.bn2 = bn(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(conv(cin, cout, 1, stride, bias=False), bn(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    """torchvision's resnet18 (BasicBlock, [2, 2, 2, 2], 1000 classes), written out."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, cin = [64, 128, 256, 512], 64
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}",
                    nn.Sequential(BasicBlock(2, cin, w, stride), BasicBlock(2, w, w)))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ECGResNet1d(nn.Module):
    """A 12-lead ECG ResNet: stem, 4 stages of 1D BasicBlocks (64-128-256-512, stride 2), GAP."""

    def __init__(self, leads: int = 12, num_classes: int = 5, blocks=(2, 2, 2, 2), k: int = 7):
        super().__init__()
        self.conv1 = nn.Conv1d(leads, 64, 15, 2, 7, bias=False)
        self.bn1 = nn.BatchNorm1d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool1d(3, 2, 1)
        widths, cin = [64, 128, 256, 512], 64
        for i, (w, nb) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            layer = [BasicBlock(1, cin, w, stride, k)] + [BasicBlock(1, w, w, 1, k)
                                                          for _ in range(nb - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class CNN3d(nn.Module):
    """A small volumetric CNN: 3 Conv3d/BN/ReLU/MaxPool3d stages, a Conv3d/BN/ReLU stage, GAP."""

    def __init__(self, cin: int = 1, num_classes: int = 4, widths=(16, 32, 64, 128)):
        super().__init__()
        prev = cin
        for i, w in enumerate(widths):
            mods = [nn.Conv3d(prev, w, 3, 1, 1, bias=False), nn.BatchNorm3d(w), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                mods.append(nn.MaxPool3d(2))
            setattr(self, f"stage{i + 1}", nn.Sequential(*mods))
            prev = w
        self.n_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(prev, num_classes)

    def forward(self, x):
        for i in range(self.n_stages):
            x = getattr(self, f"stage{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def prepare(model: nn.Module, shape: tuple, seed: int) -> nn.Module:
    """Calibrate BN running stats on random batches, randomise BN affine params, eval mode."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(shape, generator=g))
        for m in bns:
            c = m.num_features
            m.weight.copy_(torch.rand(c, generator=g) * 0.8 + 0.6)
            m.bias.copy_(torch.randn(c, generator=g) * 0.1)
            # perturb the calibrated stats a little so they are not exactly the batch ones
            m.running_mean.add_(torch.randn(c, generator=g) * 0.05)
            m.running_var.mul_(torch.rand(c, generator=g) * 0.4 + 0.8)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)  # a normal model: backward() also computes parameter grads
    return model


# ============================================================================ (a) torch hooks
class HookGradCAM:
    """pytorch-grad-cam's recipe (ActivationsAndGradients + GradCAM), kept in torch."""

    MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}

    def __init__(self, model: nn.Module, layer: nn.Module):
        self.model, self.acts, self.grads = model, None, None
        self.handle = layer.register_forward_hook(self._save)

    def _save(self, module, inputs, output):
        self.acts = output.detach()

        def keep(grad):
            self.grads = grad.detach()

        output.register_hook(keep)

    def close(self):
        self.handle.remove()

    def __call__(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        out = self.model(x)
        if targets is None:
            targets = out.argmax(1)
        self.model.zero_grad()
        loss = out.gather(1, targets[:, None]).sum()
        loss.backward()
        a, g = self.acts, self.grads
        spatial = tuple(range(2, a.dim()))
        weights = g.mean(dim=spatial, keepdim=True)
        cam = F.relu((weights * a).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[2:], mode=self.MODES[x.dim() - 2],
                            align_corners=False)[:, 0]
        flat = cam.reshape(len(cam), -1)
        mn = flat.min(1).values.view(-1, *[1] * (cam.dim() - 1))
        span = flat.max(1).values.view(-1, *[1] * (cam.dim() - 1)) - mn
        return torch.where(span > 0, (cam - mn) / span.clamp_min(1e-30), torch.zeros_like(cam))


# ============================================================================ helpers
def export_bytes(model: nn.Module, x: torch.Tensor, fold: bool) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, do_constant_folding=fold,
                          opset_version=17, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})
    return buf.getvalue()


def session(proto_bytes: bytes, threads: int, profile_dir: str | None = None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if profile_dir:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(profile_dir, "ort")
    return ort.InferenceSession(proto_bytes, so, providers=["CPUExecutionProvider"])


def make_explainer(model: nn.Module, x: torch.Tensor, threads: int, layer_modules: list[str]):
    """Explainer via the torch converter; on failure, a manual export named by ONNX tensor."""
    rt = onnx_cam.RuntimeOptions(intra_op_threads=threads)
    try:
        return onnx_cam.Explainer(model, example_input=x, runtime=rt), {m: m for m in layer_modules}, None
    except Exception as exc:  # converter still being written: fall back, as briefed
        import onnx
        data = export_bytes(model, x, fold=False)
        proto = onnx.load_from_string(data)
        names = {}
        for mod in layer_modules:
            nodes = [n for n in proto.graph.node if n.name.startswith(f"/{mod}/")]
            names[mod] = nodes[-1].output[0]
        return (onnx_cam.Explainer(data, runtime=rt), names,
                f"converter failed ({type(exc).__name__}: {exc}); exported manually")


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1e3, out


def ort_op_profile(proto_bytes: bytes, feeds: dict, outputs: list, threads: int, runs: int):
    """Per-op-type milliseconds (mean over runs) of one session from ORT's profiler."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(proto_bytes, threads, tmp)
        sess.run(outputs, feeds)
        for _ in range(runs):
            sess.run(outputs, feeds)
        path = sess.end_profiling()
        with open(path) as fh:
            events = json.load(fh)
    per_op: dict[str, float] = defaultdict(float)
    fwd_runs = [e for e in events if e.get("name") == "model_run"]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / 1e3
    n = max(len(fwd_runs), 1)
    return {k: v / n for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])}


# ============================================================================ benchmark
def bench_model(title, model, shape, layers, args, threads):
    torch.manual_seed(args.seed)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed + 1))
    x_np = x.numpy().copy()
    spatial = tuple(shape[2:])
    rows, splits, notes = [], [], []

    t_setup = time.perf_counter()
    plain = session(export_bytes(model, x, fold=True), threads)
    plain_in = plain.get_inputs()[0].name
    exp, names, note = make_explainer(model, x, threads, layers)
    if note:
        notes.append(note)
    setup_ms = (time.perf_counter() - t_setup) * 1e3
    notes.append(f"setup (ORT export + session, Explainer incl. torch export): {setup_ms:.0f} ms; "
                 f"head: {exp.head} (so both sides explain the raw logits)" if exp.head is None
                 else f"setup: {setup_ms:.0f} ms; head: {exp.head}")
    method = get_method("gradcam")

    for layer in layers:
        name = names[layer]
        hook = HookGradCAM(model, model.get_submodule(layer))

        def run_a():
            return hook(x)

        def run_b():
            return plain.run(None, {plain_in: x_np})

        def run_c():
            return exp.explain(x_np, targets=None, layers=name, methods="gradcam",
                               batch_size=args.batch)

        def run_d():
            return exp.activations_and_gradients(x_np, targets=None, layers=name,
                                                 batch_size=args.batch)

        t0 = time.perf_counter()
        res = run_c()  # builds and caches the rewritten model's session
        first_ms = (time.perf_counter() - t0) * 1e3
        cam_model, sess = exp._session((exp.model.resolve_layer(name).tensor,), spatial, False)
        outs = [cam_model.score_name, *cam_model.activation_names, *cam_model.gradient_names]
        feeds = {cam_model.input_name: x_np}

        def run_s():
            return sess.run(outs, feeds)

        def run_k(acts, grads):
            raw = method.raw(acts, grads)
            return kernels.resize_normalize(raw, spatial)

        _, sres = timed(run_s)
        for _ in range(args.warmup):
            run_a(), run_b(), run_c(), run_d(), run_s(), run_k(sres[1], sres[2])
        samples = defaultdict(list)
        for _ in range(args.repeats):
            for key, fn in (("a", run_a), ("b", run_b), ("c", run_c), ("d", run_d),
                            ("s", run_s), ("k", lambda: run_k(sres[1], sres[2]))):
                ms, _ = timed(fn)
                samples[key].append(ms)
        med = {k: statistics.median(v) for k, v in samples.items()}

        # correctness: torch hook CAM for the classes onnx-cam explained
        res = run_c()
        with torch.enable_grad():
            cam_t = hook(x, torch.from_numpy(res.targets.astype(np.int64))).numpy()
        hook.close()
        pred_t = model(x).argmax(1).detach().numpy()
        diff = float(np.abs(res.cam("gradcam", name) - cam_t).max())
        agree = int((pred_t == res.predicted).sum())
        rows.append((title, layer, med["a"], med["b"], med["c"], med["a"] / med["c"],
                     med["c"] / med["b"], diff, f"{agree}/{len(x)}"))
        splits.append((layer, med["c"], med["s"], med["k"], med["c"] - med["s"] - med["k"],
                       med["d"], first_ms, tuple(sres[1].shape)))
        if args.profile:
            prof = ort_op_profile(cam_model.proto.SerializeToString(), feeds, outs, threads,
                                  max(2, args.repeats // 2))
            base = ort_op_profile(export_bytes(model, x, fold=True), {"input": x_np}, None,
                                  threads, max(2, args.repeats // 2))
            notes.append(f"ORT op profile at {layer} (ms per run) -- onnx-cam model: "
                         + ", ".join(f"{k} {v:.1f}" for k, v in list(prof.items())[:8])
                         + " | plain model: "
                         + ", ".join(f"{k} {v:.1f}" for k, v in list(base.items())[:6]))

    print(f"\n### {title} — input {tuple(shape)}, {threads} threads, "
          f"median of {args.repeats} after {args.warmup} warm-up\n")
    print("| model | layer | torch hooks (ms) | ORT inference (ms) | onnx-cam (ms) "
          "| speed-up vs torch (a/c) | cost vs inference (c/b) | max abs diff vs torch | "
          "argmax agree |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.2f}x | "
              f"{r[6]:.2f}x | {r[7]:.2e} | {r[8]} |")
    print("\nonnx-cam split:\n")
    print("| layer | layer shape | onnx-cam (ms) | session.run (ms) | kernels (ms) "
          "| rest: Python/copies (ms) | activations_and_gradients (ms) | first explain (ms) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for s in splits:
        print(f"| {s[0]} | {s[7]} | {s[1]:.1f} | {s[2]:.1f} | {s[3]:.1f} | {s[4]:.1f} | "
              f"{s[5]:.1f} | {s[6]:.0f} |")
    for n in notes:
        print(f"\n- {n}")
    sys.stdout.flush()
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller inputs and 3 repeats")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 7, quick 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds after the first call")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="threads for torch and both ORT sessions (default: all cores)")
    p.add_argument("--models", default="resnet18,ecg1d,cnn3d",
                   help="comma-separated subset of resnet18,ecg1d,cnn3d")
    p.add_argument("--profile", action="store_true",
                   help="also print ORT per-op-type times of the rewritten and plain models")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    q = args.quick
    specs = {
        "resnet18": ("ResNet-18 2D", lambda: ResNet18(),
                     (4, 3, 112, 112) if q else (16, 3, 224, 224), ["layer4", "layer2"]),
        "ecg1d": ("ECG ResNet 1D", lambda: ECGResNet1d(),
                  (4, 12, 2500) if q else (16, 12, 5000), ["layer4", "layer2"]),
        "cnn3d": ("CNN 3D", lambda: CNN3d(),
                  (2, 1, 16, 32, 32) if q else (8, 1, 32, 64, 64), ["stage4"]),
    }
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, onnx-cam "
          f"{onnx_cam.__version__}, {os.cpu_count()} CPUs, threads={args.threads}, "
          f"{'quick' if q else 'full'} mode")
    t0 = time.perf_counter()
    all_rows = []
    for key in args.models.split(","):
        title, build, shape, layers = specs[key]
        torch.manual_seed(args.seed)
        model = prepare(build(), (max(shape[0], 8), *shape[1:]), args.seed)
        args.batch = shape[0]
        all_rows += bench_model(title, model, shape, layers, args, args.threads)

    print("\n### Targets (issue): >= 3x faster than torch hooks at the deepest layer, "
          "<= 1.3x plain ORT inference\n")
    for r in all_rows:
        ok_speed = r[5] >= 3.0
        ok_cost = r[6] <= 1.3
        print(f"- {r[0]} / {r[1]}: speed-up {r[5]:.2f}x ({'met' if ok_speed else 'MISSED'}), "
              f"cost vs inference {r[6]:.2f}x ({'met' if ok_cost else 'MISSED'}), "
              f"CAM diff {r[7]:.1e} ({'ok' if r[7] < 1e-3 else 'CHECK'})")
    print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
