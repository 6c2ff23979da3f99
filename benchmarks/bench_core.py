"""End-to-end Grad-CAM benchmark: onnx-cam vs pytorch-grad-cam, Captum and TorchCAM, and plain
ONNX Runtime inference, at the deepest and a middle layer of a 2D, a 1D and a 3D CNN.

Per (model, layer), after one warm-up round, the median of ``--repeats`` interleaved rounds of:

- **onnx-cam**: ``Explainer.explain(x, targets=None, layers=..., methods="gradcam")`` end to end
  (the predicted class, one session run; channel weights, ReLU, resize to the input, per-item
  normalisation; the session is built in a first untimed call);
- **pytorch-grad-cam** 1.5.7 ``GradCAM(model, [layer])(x, targets=None)`` (its forward, a full
  ``backward()`` with parameter gradients, resize and normalisation); it supports 2D and 3D
  only, so on the 1D model its procedure re-written in torch (``HookGradCAM``) runs instead;
- **Captum** 0.9 ``LayerGradCam(model, layer).attribute(x, target)`` (``torch.autograd.grad``
  to the layer only: a data-only backward of the head; layer-resolution maps, not resized);
- **TorchCAM** 0.5 ``GradCAM(model, layer)``: ``scores = model(x)``, ``cam(classes, scores)``
  (its backward hook; layer-resolution maps, normalised, not resized);
- **ORT inference**: the plain export run by an ``InferenceSession``;
- **onnx-cam forward**: the same export in a session made as onnx-cam makes its own (1D
  graphs run at height 1, graph/lift_1d.py; the same as ORT inference on 2D and 3D);
- **head**: the part of the model above the layer run alone in such a session (fed the layer's
  activations). A data-only backward of the head costs about its forward, so "floor" =
  (onnx-cam forward + head) / ORT inference is about the least any gradient method can cost
  there, and "lead bound" = fastest peer / (onnx-cam forward + head) the largest lead any
  ONNX Runtime implementation could show on this CPU.

Captum and TorchCAM are given the predicted classes (computed once, untimed); pytorch-grad-cam
and onnx-cam find them themselves. Every side uses ``--threads`` threads (torch and ONNX
Runtime). "lead" is the fastest peer's time over onnx-cam's, "cost" onnx-cam's over inference.
Random weights, seeded; BatchNorm statistics calibrated on random batches, eval mode; no
softmax, so every side explains the raw logits. onnx-cam's map is checked against the torch
recipe's (max abs difference, same classes). The peers are test-only references:
pytorch-grad-cam and TorchCAM are imported from ``.venv/refs`` as ``tests/references.py``
does; a missing one is reported and left out.

    python benchmarks/bench_core.py             # full sizes, 2 threads (~10 min, 2 busy cores)
    python benchmarks/bench_core.py --quick     # small sizes (~1 min)
    python benchmarks/bench_core.py --models resnet18 --repeats 5
    python benchmarks/bench_core.py --profile       # also ORT per-op-type times of onnx-cam's run
"""

from __future__ import annotations

import argparse
import importlib
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
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import onnx_cam  # noqa: E402
from onnx_cam.runtime import make_session  # noqa: E402

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
    data = export_bytes(model, x, fold=False)
    proto = onnx.load_from_string(data)
    names = {}
    for mod in layer_modules:
        nodes = [n for n in proto.graph.node if n.name.startswith(f"/{mod}/")]
        names[mod] = nodes[-1].output[0]
    return (onnx_cam.Explainer(data, runtime=rt), names,
            f"{first}; {second}; exported manually, layers named by ONNX tensor")




def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1e3, out



def load() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


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


# ============================================================================ the peers
REFS = os.path.join(sys.prefix, "refs")
_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


def import_reference(package: str):
    """`package` from .venv/refs, as tests/references.py imports it (torchvision's op schemas
    defined first, so PyPI's torchvision imports beside this torch), or None."""
    for op in ("nms", "qnms"):
        try:
            torch.library.define(f"torchvision::{op}", _SCHEMA)
        except RuntimeError:
            pass  # defined by an earlier call
    if REFS not in sys.path:
        sys.path.append(REFS)
    try:
        return importlib.import_module(package)
    except Exception as exc:  # a missing or broken reference is reported, not fatal
        print(f"- {package} not importable ({type(exc).__name__}: {exc}); left out")
        return None


def peers(model, module_name: str, x: torch.Tensor, classes: list[int]) -> dict:
    """name -> a zero-argument call computing the batch's Grad-CAM as that library does."""
    layer = model.get_submodule(module_name)
    calls = {}
    pgc = import_reference("pytorch_grad_cam")
    if pgc is not None and x.dim() in (4, 5):
        def grad_cam():  # hooks live for the call only, so they never slow the other sides
            with pgc.GradCAM(model=model, target_layers=[layer]) as cam:
                return cam(input_tensor=x, targets=None)
        calls["pytorch-grad-cam"] = grad_cam
    else:
        def recipe():
            hook = HookGradCAM(model, layer)
            try:
                return hook(x)
            finally:
                hook.close()
        calls["pytorch-grad-cam (recipe)"] = recipe
    from captum.attr import LayerGradCam

    captum = LayerGradCam(model, layer)
    target = torch.tensor(classes)
    calls["Captum"] = lambda: captum.attribute(x, target=target)
    tc = import_reference("torchcam.methods")
    if tc is not None:
        def torchcam():
            with tc.GradCAM(model, module_name, input_shape=tuple(x.shape[1:])) as extractor:
                return extractor(classes, model(x))
        calls["TorchCAM"] = torchcam
    return calls


# ============================================================================ benchmark
# Seconds between two timed sides: torch's and a plain session's threads spin-wait after a
# call, taking the cores from whatever runs next, unless given time to go idle.
PAUSE = 0.2


def interleaved(sides: dict, repeats: int, rotate: bool = False) -> dict[str, float]:
    """The median seconds of each side's call over `repeats` interleaved rounds (drifting load
    hits every side alike), PAUSE apart; `rotate`: each round starts one side later."""
    names, samples = list(sides), defaultdict(list)
    for r in range(repeats):
        shift = r % len(names) if rotate else 0
        for tag in names[shift:] + names[:shift]:
            time.sleep(PAUSE)
            t0 = time.perf_counter()
            sides[tag]()
            samples[tag].append(time.perf_counter() - t0)
    return {tag: statistics.median(samples[tag]) for tag in names}


def bench_layer(model, x, exp, name, module_name, plain, ours, args):
    """One table row: the median time of every side, and onnx-cam's CAM vs the torch recipe."""
    x_np = x.numpy().copy()
    plain_in = plain.get_inputs()[0].name
    with torch.no_grad():
        classes = model(x).argmax(1).tolist()
    sides = {
        "onnx-cam": lambda: exp.explain(x_np, targets=None, layers=name, methods="gradcam",
                                        batch_size=len(x_np)),
        **peers(model, module_name, x, classes),
        "ORT inference": lambda: plain.run(None, {plain_in: x_np}),
        "onnx-cam forward": lambda: ours.run(None, {plain_in: x_np}),
        "head": head_forward(exp, name, x_np, args.threads),
    }
    sides["onnx-cam"]()  # rewrites the graph, builds and caches the session
    for fn in sides.values():  # warm-up
        fn()
    med = interleaved(sides, args.repeats)

    res = sides["onnx-cam"]()
    hook = HookGradCAM(model, model.get_submodule(module_name))
    reference = hook(x, torch.from_numpy(res.targets.astype(np.int64))).numpy()
    hook.close()
    diff = float(np.abs(res.cam("gradcam", name) - reference).max())
    profile = None
    if args.profile:
        profile = op_profile(exp, name, x_np, args.threads)
    return med, diff, profile


def head_forward(exp, name, x_np, threads):
    """A call running the part of the model above `name` (layer -> logits) in ONNX Runtime:
    what a data-only backward of the head costs, about; inference + this is the floor."""
    from onnx_cam.graph.cut import head_model

    tensor = exp.model.resolve_layer(name).tensor
    head = head_model(exp.model, tensor, tuple(x_np.shape[2:]))
    _, layers = exp.activations_and_gradients(x_np, targets=None, layers=name,
                                              batch_size=len(x_np))
    feeds = {head.input_names[0]: layers[name][0]}
    if len(head.input_names) > 1:  # a skip connection from the model input around the layer
        feeds[head.input_names[1]] = x_np
    sess = make_session(head.proto, onnx_cam.RuntimeOptions(intra_op_threads=threads))
    return lambda: sess.run(None, feeds)


def op_profile(exp, name, x_np, threads):
    """ONNX Runtime's per-op-type milliseconds of onnx-cam's rewritten model at `name`."""
    tensor = exp.model.resolve_layer(name).tensor
    cam_model, _ = exp._sessions[next(k for k in exp._sessions if k[0] == (tensor,))]
    outs = [cam_model.score_name, *cam_model.activation_names, *cam_model.gradient_names]
    per_op = ort_op_profile(cam_model.proto.SerializeToString(), {cam_model.input_name: x_np},
                            outs, threads, runs=2)
    return ", ".join(f"{k} {v:.0f}" for k, v in list(per_op.items())[:8])


def bench_model(title, model, shape, layers, args):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed + 1))
    exported = export_bytes(model, x, fold=True)
    plain = session(exported, args.threads)
    rt = onnx_cam.RuntimeOptions(intra_op_threads=args.threads)
    ours = make_session(onnx.load_from_string(exported), rt)
    exp = onnx_cam.Explainer(model, example_input=x, runtime=rt)
    rows = []
    for layer in layers:
        med, diff, profile = bench_layer(model, x, exp, layer, layer, plain, ours, args)
        rows.append((f"{title} {'x'.join(map(str, shape))}", layer, med, diff, profile))
        print_row(*rows[-1])
    return rows


HEADER = ("| model | layer | onnx-cam (s) | {peers} | ORT inference (s) | onnx-cam forward (s) "
          "| lead over fastest peer | cost vs inference | floor vs inference | lead bound "
          "| max abs diff |")
SELF = ("onnx-cam", "ORT inference", "onnx-cam forward", "head")


def print_row(model, layer, med, diff, profile):
    peer_names = [k for k in med if k not in SELF]
    if not print_row.header_done:
        print(HEADER.format(peers=" | ".join(f"{p} (s)" for p in peer_names)))
        print("|---|---|" + "---:|" * (len(peer_names) + 8))
        print_row.header_done = True
    ours, fastest = med["onnx-cam"], min(med[p] for p in peer_names)
    floor = med["onnx-cam forward"] + med["head"]
    cells = " | ".join(f"{med[p]:.3f}" for p in peer_names)
    print(f"| {model} | {layer} | {ours:.3f} | {cells} | {med['ORT inference']:.3f} "
          f"| {med['onnx-cam forward']:.3f} | {fastest / ours:.2f}x "
          f"| {ours / med['ORT inference']:.2f}x | {floor / med['ORT inference']:.2f}x "
          f"| {fastest / floor:.2f}x | {diff:.0e} |")
    if profile:
        print(f"|  | ORT profile (ms per run): {profile} |")
    sys.stdout.flush()


print_row.header_done = False


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller inputs and batches")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    p.add_argument("--threads", type=int, default=2,
                   help="threads for torch and ONNX Runtime (default 2)")
    p.add_argument("--models", default="resnet18,ecg1d,cnn3d",
                   help="comma-separated subset of resnet18,ecg1d,cnn3d")
    p.add_argument("--profile", action="store_true",
                   help="also print ORT per-op-type times of onnx-cam's rewritten model")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    q = args.quick
    specs = {  # (title, model, input shape, [deepest, middle] layers)
        "resnet18": ("ResNet-18", ResNet18,
                     (4, 3, 112, 112) if q else (16, 3, 224, 224), ["layer4", "layer2"]),
        "ecg1d": ("ECG ResNet 1D", ECGResNet1d,
                  (4, 12, 2500) if q else (16, 12, 5000), ["layer4", "layer2"]),
        "cnn3d": ("3D CNN", CNN3d,
                  (2, 1, 16, 32, 32) if q else (8, 1, 32, 64, 64), ["stage4", "stage2"]),
    }
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, onnx-cam "
          f"{onnx_cam.__version__}, {args.threads} threads everywhere, median of {args.repeats} "
          f"interleaved rounds, {'quick' if q else 'full'} sizes; load average {load()}\n")
    t0 = time.perf_counter()
    for key in args.models.split(","):
        title, build, shape, layers = specs[key]
        torch.manual_seed(args.seed)
        model = prepare(build(), (max(shape[0], 8), *shape[1:]), args.seed)
        bench_model(title, model, shape, layers, args)
    print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s; load average {load()}")


if __name__ == "__main__":
    main()
