"""The `onnx-cam` command: inspect a model's layers and explain arrays from the shell.

    onnx-cam layers MODEL.onnx [--json]
    onnx-cam explain MODEL.onnx INPUT.npy [INPUT.npz ...] --out DIR [--method gradcam]
                     [--layer auto] [--target pred|K|NAME] [--foil K|NAME] [--json]

Exit codes: 0 done, 2 bad usage or bad input (an OnnxCamError: the message says what to do).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .errors import InputError, OnnxCamError
from .explainer import Explainer

EXIT_OK, EXIT_USAGE = 0, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnx-cam", description="Class-activation maps for CNNs on ONNX models.")
    parser.add_argument("--version", action="version", version=f"onnx-cam {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    layers = sub.add_parser("layers", help="the model's input, head and candidate layers")
    layers.add_argument("model", help="an .onnx file")
    layers.add_argument("--json", action="store_true", help="machine-readable output")

    explain = sub.add_parser(
        "explain", help="CAMs for the items of .npy / .npz files (batch first)",
        description="Explain every item of the input arrays; writes DIR/cams.npz (one "
                    "Explanation, readable by onnx_cam.Explanation.load) and DIR/summary.json.")
    explain.add_argument("model", help="an .onnx file")
    explain.add_argument("inputs", nargs="+", help=".npy or .npz files of shape (N, ...) as the "
                         "model takes them; .npz: every array, in name order")
    explain.add_argument("--out", required=True, help="output folder (created)")
    explain.add_argument("--method", action="append", dest="methods",
                         help="CAM method, repeatable (default gradcam)")
    explain.add_argument("--layer", action="append", dest="layers",
                         help="layer name, repeatable (default: auto, the deepest)")
    explain.add_argument("--target", default="pred",
                         help="pred (predicted class), a class index or a class name")
    explain.add_argument("--foil", help="contrastive class index or name")
    explain.add_argument("--batch-size", type=int, default=64)
    explain.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def _class(value: str | None):
    if value is None or value == "pred":
        return None
    return int(value) if value.lstrip("-").isdigit() else value


def _read_inputs(paths: list[str]) -> np.ndarray:
    arrays = []
    for path in paths:
        try:
            loaded = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(f"Cannot read {path!r} as a .npy / .npz array ({exc}).") from None
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                arrays.extend(loaded[k] for k in sorted(loaded.files))
        else:
            arrays.append(loaded)
    if any(a.ndim == 0 for a in arrays):
        raise InputError("An input array is a scalar; give arrays shaped (N, ...).")
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) != 1:
        raise InputError(f"The input arrays have different item shapes {sorted(shapes)}; "
                         "give arrays of one shape per call.")
    return np.concatenate(arrays)


def _layers(args) -> dict:
    exp = Explainer(args.model)
    return {"input": {"name": exp.model.input_name, "shape": list(exp.model.input_shape)},
            "head": exp.head, "classes": exp.num_classes, "class_names": exp.class_names,
            "layers": [{"name": layer.name, "tensor": layer.tensor, "op": layer.op,
                        "shape": [d if isinstance(d, int) else str(d) for d in layer.shape]}
                       for layer in exp.layer_info]}


def _explain(args) -> dict:
    exp = Explainer(args.model)
    x = _read_inputs(args.inputs)
    res = exp.explain(x, targets=_class(args.target), foils=_class(args.foil),
                      layers=args.layers or "auto", methods=args.methods or "gradcam",
                      batch_size=args.batch_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res.save(out / "cams.npz")
    summary = {
        "model": os.fspath(args.model), "items": len(x), "methods": res.methods,
        "layers": res.layers, "head": res.head,
        "rows": [{"item": int(res.items[r]), "target": int(res.targets[r]),
                  "predicted": int(res.predicted[r]),
                  "probability": float(res.probs[r, res.targets[r]]),
                  "score_ranges": {f"{m}/{layer}": res.score_range(m, layer)[r].tolist()
                                   for m in res.methods for layer in res.layers}}
                 for r in range(len(res))],
    }
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out / "summary.json")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = _layers(args) if args.command == "layers" else _explain(args)
    except OnnxCamError as exc:
        print(f"onnx-cam: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.command == "layers":
        print(f"input  {result['input']['name']} {result['input']['shape']}")
        print(f"head   {result['head']}  ({result['classes']} classes)")
        print("layers (deepest first):")
        for layer in result["layers"]:
            print(f"  {layer['name']:<32} {layer['op']:<20} {layer['shape']}")
    else:
        print(f"explained {result['items']} items ({len(result['rows'])} maps per method and "
              f"layer) -> {args.out}/cams.npz, {args.out}/summary.json")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
