"""Peak memory of large inputs: a 12-lead 500,000-sample signal and a 256^3 volume.

Each case runs in a fresh subprocess that reads the ONNX file (no torch imported there) and
reports its peak resident memory (Linux VmHWM): the whole process, and what the explain()
call added (the peak reset just before it). Baseline: the same process running plain ONNX
Runtime inference of the original model on the same input. onnx-cam's own estimate for the
batch it ran (what the budget is checked against: onnx_cam.memory's live-tensor count of the
rewritten model times RUNTIME_OVERHEAD, the methods' temporaries, the results) is beside it.

    python benchmarks/bench_memory.py              # both models, ~3-5 min on 2 busy cores
    python benchmarks/bench_memory.py --quick      # smaller inputs (~1 min)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap

import onnx
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from bench_core import CNN3d, ECGResNet1d, prepare  # noqa: E402

from onnx_cam.converters import export_torch  # noqa: E402

GIB = 2**30

CHILD = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import onnxruntime as ort
    import onnx_cam
    from onnx_cam import cam_runs, memory
    from onnx_cam.graph.cam_model import CamOutputs

    path, shape, layer, max_memory, batch_size, mode = json.loads(sys.argv[1])

    def status(key):
        return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
                    if line.startswith(key))

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = {}
    if mode == "inference":
        session = ort.InferenceSession(path)
        before = status("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")
        start = time.perf_counter()
        session.run(None, {session.get_inputs()[0].name: x})
    else:
        exp = onnx_cam.Explainer(path, max_memory=max_memory)
        batches = []
        before = status("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")
        start = time.perf_counter()
        try:
            exp.explain(x, targets=0, layers=layer, batch_size=batch_size,
                        progress=lambda done, total: batches.append(done))
        except onnx_cam.MemoryBudgetError as exc:
            out["refused"] = str(exc)
        if batches:  # what the budget was checked against, for the batch that ran
            need, _, _ = cam_runs.memory_need(exp, exp.check_input(x),
                                              exp._resolve_layers(layer), True, CamOutputs(),
                                              1, len(x))
            out["estimate"] = need.bytes(batches[0])
            out["batch"] = batches[0]
        out["budget"] = memory.memory_budget(max_memory)
    out["seconds"] = time.perf_counter() - start
    out["added"] = status("VmHWM") - before
    out["peak"] = status("VmHWM")  # since the reset: the model loaded before, and the call
    print(json.dumps(out))
""")


def free_spatial(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its input's spatial axes left free (exported small, run large)."""
    for i, dim in enumerate(proto.graph.input[0].type.tensor_type.shape.dim[2:]):
        dim.Clear()
        dim.dim_param = f"S{i}"
    del proto.graph.value_info[:]
    return proto


def export(model: torch.nn.Module, example_shape: tuple, path: str) -> str:
    proto = export_torch(model, torch.randn(example_shape))
    onnx.save(free_spatial(proto), path)
    return path


def measure(path, shape, layer=None, max_memory=None, batch_size=64, mode="explain") -> dict:
    args = json.dumps([path, list(shape), layer, max_memory, batch_size, mode])
    done = subprocess.run([sys.executable, "-c", CHILD, args], capture_output=True, text=True,
                          cwd=ROOT, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="12 x 100,000 and 128^3")
    args = parser.parse_args()
    length, side = (100_000, 128) if args.quick else (500_000, 256)
    folder = tempfile.mkdtemp(prefix="bench_memory_")
    torch.manual_seed(0)
    ecg = export(prepare(ECGResNet1d(), (2, 12, 4000), 0), (2, 12, 4000),
                 os.path.join(folder, "ecg.onnx"))
    vol = export(prepare(CNN3d(), (2, 1, 32, 32, 32), 0), (2, 1, 32, 32, 32),
                 os.path.join(folder, "cnn3d.onnx"))
    signal, volume = (1, 12, length), (1, 1, side, side, side)
    cases = [
        ("ECG ResNet-1d", ecg, signal, "layer4", None, 64),
        ("ECG ResNet-1d", ecg, signal, "layer1", None, 64),
        ("ECG ResNet-1d, 4 items", ecg, (4, 12, length), "layer4", None, 64),
        ("ECG ResNet-1d, 4 items", ecg, (4, 12, length), "layer4", "1.5GiB", 64),
        ("3D CNN", vol, volume, "stage4", None, 64),
        ("3D CNN", vol, volume, "stage2", None, 64),
        ("3D CNN", vol, volume, "stage4", "1GiB", 64),
    ]
    print("| model | input | layer | max_memory | batch run | onnx-cam estimate (GiB) | "
          "peak RSS added (GiB) | process peak (GiB) | inference peak added (GiB) | "
          "ratio vs inference | s |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    inference = {}
    for name, path, shape, layer, max_memory, batch in cases:
        key = (path, tuple(shape))
        if key not in inference:
            inference[key] = measure(path, shape, mode="inference")
        base = inference[key]
        got = measure(path, shape, layer, max_memory, batch)
        shown = "x".join(map(str, shape))
        budget = max_memory or f"default ({got['budget'] / GIB:.1f} GiB)"
        if "refused" in got:
            need = got["refused"].split("needs about ")[1].split(" (")[0]
            print(f"| {name} | {shown} | {layer} | {budget} | refused (needs {need}) | | "
                  f"{got['added'] / GIB:.2f} | | {base['added'] / GIB:.2f} | | "
                  f"{got['seconds']:.1f} |")
            continue
        print(f"| {name} | {shown} | {layer} | {budget} | {got['batch']} | "
              f"{got['estimate'] / GIB:.2f} | {got['added'] / GIB:.2f} | "
              f"{got['peak'] / GIB:.2f} | {base['added'] / GIB:.2f} | "
              f"{got['added'] / max(base['added'], 1):.1f}x | {got['seconds']:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
