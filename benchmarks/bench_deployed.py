"""Deployed forms: does the explanation cost carry over to float16 and int8 models?

For a ResNet-18 (224x224 images) and the 1D ECG ResNet of bench_core.py (12 leads), the torch
export (float32) is turned into the forms users deploy:

- float16: ``onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)``;
- int8 QDQ: ``quantize_static(..., QuantFormat.QDQ, per_channel=True)``;
- int8 QOperator: ``quantize_static(..., QuantFormat.QOperator, per_channel=True)``;
- int8 dynamic: ``quantize_dynamic``.

For each form, after warm-up, the median of ``--repeats`` interleaved rounds of:

(a) **inference**: the form's own file in an ``InferenceSession`` with default options;
(b) **explain**: ``Explainer(file).explain(x, layers=layer, methods="gradcam")`` end to end
    (the predicted class; session cached, warmed up first), for two layers: the deepest, and
    the deepest at 1/8 of the input's resolution (the output of the second stage: the
    gradient crosses half the network).

The table gives (b) / (a) (what an explanation costs over the form's own inference) and (b) of
each form over (b) of float32. Random weights, BatchNorm calibrated as in bench_core.py; int8
calibration on random batches.

    python benchmarks/bench_deployed.py             # ~3 min on 2 busy cores
    python benchmarks/bench_deployed.py --quick     # smaller inputs
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.dirname(os.path.abspath(__file__))):
    if path not in sys.path:
        sys.path.insert(0, path)

from bench_core import ECGResNet1d, ResNet18, prepare  # noqa: E402
from onnxruntime.quantization import (  # noqa: E402
    CalibrationDataReader,
    QuantFormat,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: E402

import onnx_cam  # noqa: E402

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)  # the quantiser's advice on pre-processing


class Calibration(CalibrationDataReader):
    def __init__(self, shape, count: int = 4):
        rng = np.random.default_rng(0)
        self.items = iter([{"input": rng.standard_normal(shape).astype(np.float32)}
                           for _ in range(count)])

    def get_next(self):
        return next(self.items, None)


def export(model: torch.nn.Module, shape: tuple, path: str) -> None:
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.randn(*shape),), buffer, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})
    onnx.save(onnx.load_from_string(buffer.getvalue()), path)


def forms(float_path: str, item_shape: tuple, folder: str) -> dict[str, str]:
    paths = {"float32": float_path}
    paths["float16"] = os.path.join(folder, "float16.onnx")
    onnx.save(convert_float_to_float16(onnx.load(float_path), keep_io_types=True),
              paths["float16"])
    for fmt in ("QDQ", "QOperator"):
        paths[f"int8 {fmt}"] = os.path.join(folder, f"{fmt}.onnx")
        quantize_static(float_path, paths[f"int8 {fmt}"], Calibration(item_shape),
                        quant_format=getattr(QuantFormat, fmt), per_channel=True)
    paths["int8 dynamic"] = os.path.join(folder, "dynamic.onnx")
    quantize_dynamic(float_path, paths["int8 dynamic"])
    return paths


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(name: str, model: torch.nn.Module, batch_shape: tuple, repeats: int) -> list[tuple]:
    x = np.random.default_rng(1).standard_normal(batch_shape).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        float_path = os.path.join(folder, "float32.onnx")
        export(prepare(model, (4, *batch_shape[1:]), 0), batch_shape, float_path)
        paths = forms(float_path, (1, *batch_shape[1:]), folder)
        runners = {}
        for form, path in paths.items():
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            feed = {"input": x.astype(np.float16) if "float16" in form and
                    session.get_inputs()[0].type == "tensor(float16)" else x}
            explainer = onnx_cam.Explainer(path)
            eighth = tuple(d // 8 for d in batch_shape[2:])
            middle = next(layer.name for layer in explainer.layer_info
                          if tuple(layer.shape[2:]) == eighth)
            runners[form] = [lambda s=session, f=feed: s.run(None, f)] + [
                lambda e=explainer, ly=layer: e.explain(x, layers=ly)
                for layer in (explainer.layers[0], middle)]
            for fn in runners[form]:
                fn()  # warm-up: sessions, graph rewrites
        times = {form: ([], [], []) for form in runners}
        for _ in range(repeats):
            for form, fns in runners.items():
                for kept, fn in zip(times[form], fns):
                    kept.append(timed(fn))
    base = [statistics.median(t) for t in times["float32"][1:]]
    rows = []
    for form, kept in times.items():
        a, deep, mid = (statistics.median(t) for t in kept)
        rows.append((name, form, a * 1e3, deep * 1e3, deep / a, deep / base[0], mid * 1e3,
                     mid / a, mid / base[1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smaller inputs")
    args = parser.parse_args()
    side, length = (112, 2500) if args.quick else (224, 5000)
    rows = bench(f"resnet18 4x3x{side}x{side}", ResNet18(), (4, 3, side, side), args.repeats)
    rows += bench(f"ecg-resnet 16x12x{length}", ECGResNet1d(), (16, 12, length), args.repeats)
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, "
          f"{os.cpu_count()} cores, median of {args.repeats}")
    print("| model | form | inference (ms) | explain deepest (ms) | / own inference "
          "| / float32's | explain 1/8 layer (ms) | / own inference | / float32's |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, form, infer, *cells in rows:
        deep, deep_own, deep_base, mid, mid_own, mid_base = cells
        print(f"| {name} | {form} | {infer:.0f} | {deep:.0f} | {deep_own:.2f} | "
              f"{deep_base:.2f} | {mid:.0f} | {mid_own:.2f} | {mid_base:.2f} |")


if __name__ == "__main__":
    main()
