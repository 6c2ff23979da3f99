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

Then where (c)'s time goes: the rewritten model's ``session.run``, measured inside the same
explain() calls (the cached session is wrapped by a timer), and the rest of each call (numba
kernels + Python); "kernels alone" re-runs the numba kernels (Grad-CAM raw map + fused resize /
normalise) on their own; ``activations_and_gradients`` is timed too.

The CAMs of (a), computed for the classes onnx-cam explained, are compared with onnx-cam's:
the maximum absolute difference is printed. These models have no softmax, so both explain the
raw logits.

Random weights, seeded; BatchNorm running statistics are calibrated on random batches (so
they are non-trivial and activations stay in range), affine parameters randomised, then
every model is put in eval mode.

    python benchmarks/bench_core.py            # full sizes (~4-5 min on 2 busy cores)
    python benchmarks/bench_core.py --quick    # small sizes (~2 min)
    python benchmarks/bench_core.py --models resnet18 --repeats 7 --numba-threads 1
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
            mods = [nn.Conv3d(prev, w, 3, 1, 1, bias=False), nn.BatchNorm3d(w),
                    nn.ReLU(inplace=True)]
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
        if not output.requires_grad:  # e.g. under torch.no_grad(), as pytorch-grad-cam skips
            return

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


def make_explainer(model: nn.Module, x: torch.Tensor, threads: int, layer_modules: list[str],
                   spinning: bool = False):
    """Explainer(module, example_input=x); else export_torch + Explainer(proto); else a manual
    export with layers named by ONNX tensor (the output of the last node under /<module>/)."""
    rt = onnx_cam.RuntimeOptions(intra_op_threads=threads, spinning=spinning)
    same = {m: m for m in layer_modules}
    try:
        return onnx_cam.Explainer(model, example_input=x, runtime=rt), same, None
    except Exception as exc:
        first = f"Explainer(module, example_input=x) failed ({type(exc).__name__}: {exc})"
    try:
        from onnx_cam.converters import export_torch
        return (onnx_cam.Explainer(export_torch(model, x), runtime=rt), same,
                first + "; used Explainer(export_torch(module, x)) instead")
    except Exception as exc:
        second = f"export_torch failed ({type(exc).__name__}: {exc})"
    import onnx
    data = export_bytes(model, x, fold=False)
    proto = onnx.load_from_string(data)
    names = {}
    for mod in layer_modules:
        nodes = [n for n in proto.graph.node if n.name.startswith(f"/{mod}/")]
        names[mod] = nodes[-1].output[0]
    return (onnx_cam.Explainer(data, runtime=rt), names,
            f"{first}; {second}; exported manually, layers named by ONNX tensor")


class TimedSession:
    """Forwards run() to an InferenceSession and adds up the milliseconds spent in it."""

    def __init__(self, sess):
        self.sess, self.ms = sess, 0.0

    def run(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.sess.run(*args, **kwargs)
        finally:
            self.ms += (time.perf_counter() - t0) * 1e3

    def __getattr__(self, item):
        return getattr(self.sess, item)


def load() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


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
def bench_layer(model, x, exp, name, module_name, plain, args, notes):
    """Times (a), (b), (c) and the split of (c) for one layer; checks the CAMs agree."""
    x_np = x.numpy().copy()
    spatial = tuple(x.shape[2:])
    plain_in = plain.get_inputs()[0].name
    hook = HookGradCAM(model, model.get_submodule(module_name))

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
    run_c()  # rewrites the graph, builds and caches the session
    first_ms = (time.perf_counter() - t0) * 1e3
    # the cached session, wrapped so that explain() reports its own session.run time
    tensor = exp.model.resolve_layer(name).tensor
    key = next(k for k in exp._sessions if k[0] == (tensor,))
    cam_model, sess = exp._sessions[key]
    timer = TimedSession(sess)
    exp._sessions[key] = (cam_model, timer)
    outs = [cam_model.score_name, *cam_model.activation_names, *cam_model.gradient_names]
    feeds = {cam_model.input_name: x_np}
    _, acts, grads = sess.run(outs, feeds)

    def run_k():  # Grad-CAM's kernels, called directly (what the gradcam method runs)
        raw = kernels.weighted_channel_sum(acts, kernels.spatial_mean(grads))
        return kernels.resize_normalize(raw, spatial)

    for _ in range(args.warmup):
        run_a(), run_b(), run_c(), run_d(), run_k()
    samples = defaultdict(list)
    for _ in range(args.repeats):  # interleaved rounds: drifting load hits all alike
        for tag, fn in (("a", run_a), ("b", run_b), ("c", run_c), ("d", run_d), ("k", run_k)):
            timer.ms = 0.0
            ms, _ = timed(fn)
            samples[tag].append(ms)
            if tag == "c":
                samples["c_run"].append(timer.ms)
                samples["c_rest"].append(ms - timer.ms)
    med = {k: statistics.median(v) for k, v in samples.items()}
    low = {k: min(v) for k, v in samples.items()}
    exp._sessions[key] = (cam_model, sess)

    # correctness: the torch hook CAM for the classes onnx-cam explained
    res = run_c()
    cam_t = hook(x, torch.from_numpy(res.targets.astype(np.int64))).numpy()
    hook.close()
    with torch.no_grad():
        pred_t = model(x).argmax(1).numpy()
    diff = float(np.abs(res.cam("gradcam", name) - cam_t).max())
    agree = int((pred_t == res.predicted).sum())

    if args.profile:
        runs = max(2, args.repeats // 2)
        prof = ort_op_profile(cam_model.proto.SerializeToString(), feeds, outs, args.threads,
                              runs)
        base = ort_op_profile(export_bytes(model, x, fold=True), {plain_in: x_np}, None,
                              args.threads, runs)
        notes.append(f"ORT profile at {module_name}, ms per run by op type -- onnx-cam model: "
                     + ", ".join(f"{k} {v:.1f}" for k, v in list(prof.items())[:8])
                     + " | plain model: "
                     + ", ".join(f"{k} {v:.1f}" for k, v in list(base.items())[:5]))
    row = {"layer": module_name, "a": med["a"], "b": med["b"], "c": med["c"],
           "speedup": med["a"] / med["c"], "cost": med["c"] / med["b"], "diff": diff,
           "agree": f"{agree}/{len(x)}", "speedup_min": low["a"] / low["c"],
           "cost_min": low["c"] / low["b"]}
    split = {"layer": module_name, "shape": tuple(acts.shape), "c_run": med["c_run"],
             "c_rest": med["c_rest"], "k": med["k"], "d": med["d"],
             "run_vs_b": med["c_run"] / med["b"], "first": first_ms}
    return row, split


def bench_model(title, model, shape, layers, args):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed + 1))
    notes = []
    t0 = time.perf_counter()
    plain = session(export_bytes(model, x, fold=True), args.threads)
    exp, names, note = make_explainer(model, x, args.threads, layers, args.spinning)
    if note:
        notes.append(note)
    notes.append(f"setup (plain export + session, Explainer incl. torch export): "
                 f"{(time.perf_counter() - t0) * 1e3:.0f} ms; head: {exp.head}"
                 + (" -- no softmax, so both sides explain the raw logits"
                    if exp.head is None else ""))
    rows, splits = [], []
    for layer in layers:
        row, split = bench_layer(model, x, exp, names[layer], layer, plain, args, notes)
        rows.append({"model": title, **row})
        splits.append(split)

    print(f"\n### {title} -- input {tuple(shape)}, {args.threads} threads, "
          f"median of {args.repeats} after {args.warmup} warm-up\n")
    print("| model | layer | torch hooks (ms) | ORT inference (ms) | onnx-cam (ms) "
          "| speed-up vs torch (a/c) | cost vs inference (c/b) | max abs diff vs torch "
          "| argmax agree |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['layer']} | {r['a']:.1f} | {r['b']:.1f} | {r['c']:.1f} "
              f"| {r['speedup']:.2f}x | {r['cost']:.2f}x | {r['diff']:.1e} | {r['agree']} |")
    print("\nWhere onnx-cam's time goes (medians; the two explain columns are measured inside "
          "the same explain() calls):\n")
    print("| layer | layer shape | explain: session.run (ms) | explain: kernels + Python (ms) "
          "| kernels alone (ms) | activations_and_gradients (ms) | session.run / ORT inference "
          "| first explain (ms) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for s in splits:
        print(f"| {s['layer']} | {s['shape']} | {s['c_run']:.1f} | {s['c_rest']:.1f} "
              f"| {s['k']:.1f} | {s['d']:.1f} | {s['run_vs_b']:.2f}x | {s['first']:.0f} |")
    print("\n- first explain = graph rewrite + session creation (+ numba JIT/cache load on the "
          "first model)")
    for n in notes:
        print(f"- {n}")
    sys.stdout.flush()
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller inputs and batches")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed rounds (default 3; use 5-7 on a quiet machine)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds after the first call")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="threads for torch and both ORT sessions (default: all cores)")
    p.add_argument("--models", default="resnet18,ecg1d,cnn3d",
                   help="comma-separated subset of resnet18,ecg1d,cnn3d")
    p.add_argument("--profile", action="store_true",
                   help="also print ORT per-op-type times of the rewritten and plain models")
    p.add_argument("--numba-threads", type=int, default=None,
                   help="numba.set_num_threads for the kernels (default: numba's, = cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spinning", action="store_true",
                   help="let onnx-cam's ONNX Runtime threads spin when idle (ORT's default)")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    if args.numba_threads:
        import numba
        numba.set_num_threads(args.numba_threads)
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
          f"{'quick' if q else 'full'} mode, numba threads "
          f"{args.numba_threads or 'default'}; load average {load()} "
          "(other processes on the machine inflate and scatter every timing)")
    t0 = time.perf_counter()
    all_rows = []
    for key in args.models.split(","):
        title, build, shape, layers = specs[key]
        torch.manual_seed(args.seed)
        model = prepare(build(), (max(shape[0], 8), *shape[1:]), args.seed)
        args.batch = shape[0]
        all_rows += bench_model(title, model, shape, layers, args)

    print("\n### Targets (issue): >= 3x faster than torch hooks and <= 1.3x plain ORT "
          "inference, at the deepest layer\n")
    print("(medians as in the tables; ratios of the fastest samples are given too, since load "
          "from other processes only ever adds time. Torch hooks cost the same at every layer "
          "of a model: backward() runs to the first layer's weights either way.)\n")
    deepest = {key: specs[key][3][0] for key in args.models.split(",")}
    titles = {specs[key][0]: key for key in deepest}
    for r in all_rows:
        target = r["layer"] == deepest[titles[r["model"]]]
        mark = (lambda ok: "met" if ok else "MISSED") if target else (lambda ok: "info")
        print(f"- {r['model']} / {r['layer']}{'' if target else ' (not a target layer)'}: "
              f"speed-up {r['speedup']:.2f}x ({mark(r['speedup'] >= 3.0)}; "
              f"{r['speedup_min']:.2f}x from minima), "
              f"cost vs inference {r['cost']:.2f}x ({mark(r['cost'] <= 1.3)}; "
              f"{r['cost_min']:.2f}x from minima), "
              f"CAM max abs diff {r['diff']:.1e}")
    print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s; load average {load()}")


if __name__ == "__main__":
    main()
