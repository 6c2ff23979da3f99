"""`onnx-cam explain MODEL.onnx INPUT... --out DIR`: CAMs for the items of the inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..explainer import Explainer


def add_parser(sub):
    parser = sub.add_parser(
        "explain", help="CAMs for the items of .npy / .npz files (batch first)",
        description="Explain every item of the input arrays; writes DIR/cams.npz (one "
                    "Explanation, readable by onnx_cam.Explanation.load) and DIR/summary.json.")
    parser.add_argument("model", help="an .onnx file")
    parser.add_argument("inputs", nargs="+", help=".npy or .npz files of shape (N, ...) as the "
                        "model takes them; .npz: every array, in name order")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--method", action="append", dest="methods",
                        help="CAM method, repeatable (default gradcam)")
    parser.add_argument("--layer", action="append", dest="layers",
                        help="layer name, repeatable (default: auto, the deepest)")
    parser.add_argument("--target", default="pred",
                        help="pred (predicted class), a class index or a class name")
    parser.add_argument("--foil", help="contrastive class index or name")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
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


def explain(args) -> dict:
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


def run(args) -> None:
    summary = explain(args)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"explained {summary['items']} items ({len(summary['rows'])} maps per method and "
              f"layer) -> {args.out}/cams.npz, {args.out}/summary.json")
