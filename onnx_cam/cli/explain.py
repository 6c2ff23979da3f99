"""`onnx-cam explain MODEL.onnx INPUT... --out DIR`: CAMs for the items of input files."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np

from ..dense import LAYOUTS, Detection, Segmentation
from ..errors import InputError
from ..explainer import Explainer
from ..files import write_atomic, write_json
from ..inputs import _read_array, concatenate_items, expand_paths, read_file, read_named_arrays
from ..memory import memory_budget
from ..methods import METHODS
from ..progress import progress_bar, wanted
from .options import add_preprocess_options, parse_class, preprocess_from_args

DESCRIPTION = """\
Explain every item of the input files with one or more CAM methods and layers.

Inputs (files or folders, in the order given; a folder means its input files by name):
  .npy / .npz     arrays batch first, as the model takes them (.npz: every array, by name)
  .png .jpg ...   one image each: converted to RGB (or grayscale for 1-channel models),
                  resized to --size, then (pixel * scale - mean) / std per channel
  .csv / .tsv     one signal each: one column per channel, one row per sample, an optional
                  header row (--csv-transpose: one row per channel)
A model with several inputs reads .npz files holding one array per input name; the maps
cover --input (default: the input the layers are computed from), the others are fed as given.

Writes into DIR (each file appears whole or not at all, summary.json last):
  cams.npz        every map, score, target (onnx_cam.Explanation.load reads it), or with
                  --format npy one array per (method, layer): cam_<method>_<layer>.npy
                  (input attributions: layer "input", and the signed attribution shaped
                  like the input, channels first: attribution_<method>_input.npy)
  summary.json    per map: item, input file, target, prediction, probabilities, class
                  names, score range (the map's min and max before scaling to [0, 1]),
                  input attributions' extras (integrated gradients' completeness gap)"""

EXAMPLES = """\
examples:
  onnx-cam explain model.onnx batch.npy --out results
  onnx-cam explain model.onnx scans/ --out results --method gradcam --method hirescam \\
      --layer layer4 --target pred --size 224 224 --mean 0.485 0.456 0.406 \\
      --std 0.229 0.224 0.225
  onnx-cam explain ecg.onnx record.csv --out results --target af --foil normal --json
  onnx-cam explain unet.onnx scans.npy --out results --target 2 --mask lesion.npy"""


def add_parser(sub):
    parser = sub.add_parser(
        "explain", help="CAMs for the items of .npy / .npz / image / CSV files",
        description=DESCRIPTION, epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an .onnx file")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="input files or folders (see above)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder (created; existing files of the same names are "
                             "replaced)")
    what = parser.add_argument_group("what to explain")
    what.add_argument("--method", action="append", dest="methods", metavar="NAME",
                      help="CAM or input-attribution method, repeatable (default: gradcam); one of "
                           + ", ".join(sorted({m.name for m in METHODS.values()})))
    what.add_argument("--layer", action="append", dest="layers", metavar="NAME",
                      help="layer, repeatable (default: auto, the deepest candidate; "
                           "`onnx-cam layers MODEL` lists them)")
    what.add_argument("--target", default="pred",
                      help="pred (each item's predicted class; the default), a class index, a "
                           "class name, all (every class) or topK (e.g. top2)")
    what.add_argument("--mask", metavar="FILE.npy",
                      help="segmentation models (an output (N, classes, *spatial)): explain "
                           "--target CLASS summed over this mask of the output's spatial axes "
                           "(bool or weights; one mask, or one per item), or `pred`: where "
                           "CLASS is predicted (onnx_cam.Segmentation)")
    what.add_argument("--box", metavar="INDEX|X1,Y1,X2,Y2",
                      help="detectors (a raw output before NMS): explain one box, by its index "
                           "among the candidates or by corners matched by IoU, for --target "
                           "CLASS (pred: the box's best class) (onnx_cam.Detection)")
    what.add_argument("--layout", choices=sorted(LAYOUTS), default="yolo",
                      help="with --box: yolo (N, boxes, 4 [+ 1] + classes; the default), "
                           "yolo_t (transposed), detr (N, boxes, classes), detr_t")
    what.add_argument("--objectness", action="store_true",
                      help="with --box: the yolo output has an objectness field after the 4 "
                           "coordinates; the score is objectness x class score")
    what.add_argument("--foil", metavar="CLASS",
                      help="contrast each target with this class index or name (default: none)")
    what.add_argument("--score", choices=("logits", "log_probs", "probs"), default="logits",
                      help="what is differentiated (default: logits, the tensor before a final "
                           "softmax / sigmoid)")
    what.add_argument("--input", metavar="NAME",
                      help="a model with several inputs: the input the maps cover (default: "
                           "the one the layers are computed from)")
    what.add_argument("--batch-size", type=int, default=64, metavar="N",
                      help="items per ONNX Runtime run (default: 64)")
    add_preprocess_options(parser, "images and CSV signals (arrays are taken as they are)")
    out = parser.add_argument_group("output")
    out.add_argument("--format", choices=("npz", "npy"), default="npz",
                     help="npz: one cams.npz (default); npy: one .npy per (method, layer)")
    out.add_argument("--json", action="store_true",
                     help="print the summary as JSON on stdout (default: a short table)")
    out.add_argument("--plot", action="store_true",
                     help="also draw one figure per map row into DIR/figures/ (signals: "
                          "coloured lines; images: overlays; volumes: animated GIFs)")
    out.add_argument("--fs", type=float, metavar="HZ",
                     help="with --plot: sampling frequency, for a time axis in seconds")
    out.add_argument("--channel-names", metavar="A,B,...",
                     help="with --plot: names of the input channels, comma-separated")
    out.add_argument("--cmap", default="jet",
                     help="with --plot: any matplotlib colormap name (default: jet)")
    out.add_argument("--quiet", action="store_true",
                     help="no progress bar, no table (errors still go to stderr)")
    return parser


def _file_name(prefix: str, method: str, layer: str, taken: set[str]) -> str:
    """A file name for a map: layer names may hold '/' and ':' (ONNX tensor names)."""
    stem = f"{prefix}_{method}_" + re.sub(r"[^A-Za-z0-9._+-]+", "_", layer).strip("_.")
    name, k = f"{stem}.npy", 1
    while name in taken:
        k += 1
        name = f"{stem}_{k}.npy"
    taken.add(name)
    return name


def explain(args) -> dict:
    """Read, explain, write; returns the summary written to DIR/summary.json."""
    exp = Explainer(args.model)
    pre = preprocess_from_args(args, exp)
    files = expand_paths(args.inputs)
    layers = args.layers or "auto"
    if len(exp.inputs) > 1:  # one array per input name in each .npz
        named = [read_named_arrays(p, exp.inputs) for p in files]
        given = {name: np.concatenate([n[name] for n in named]) for name in exp.inputs}
        arrays = [next(iter(n.values())) for n in named]
        x = given[exp.explained_input(args.input, layers)]
    else:
        arrays = [read_file(p, pre, item_shape=exp.model.input_shape[1:]) for p in files]
        given = x = concatenate_items(files, arrays)
    with progress_bar("explaining", enabled=wanted(args.quiet)) as progress:
        res = exp.explain(given, targets=_targets(args), foils=parse_class(args.foil),
                          layers=layers, methods=args.methods or "gradcam",
                          score=args.score, batch_size=args.batch_size, progress=progress,
                          input=args.input)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = _write_maps(res, out, args.format)
    if args.plot:
        written["figures"] = [os.fspath(p.relative_to(out)) for p in _plot(args, res, x, out)]
    summary = _summary(args.model, res, files, [len(a) for a in arrays], pre, written)
    write_json(out / "summary.json", summary)
    return summary


def _targets(args):
    """--target, or with --mask / --box the Segmentation / Detection target it names."""
    target = parse_class(args.target)
    if args.box is not None:
        if args.mask is not None:
            raise InputError("Give --mask (segmentation) or --box (detection), not both.")
        return Detection(_box(args.box), target, layout=args.layout,
                         objectness=args.objectness)
    if args.mask is None:
        return target
    if target is None or args.target in ("all",) or str(args.target).startswith("top"):
        raise InputError("--mask needs --target CLASS (a class index or name) to explain "
                         "over it.")
    mask = None if args.mask == "pred" else _read_array(Path(args.mask), memory_budget(None))
    return Segmentation(target, mask)


def _box(text: str):
    """--box: a candidate's index, or four comma-separated corners."""
    parts = text.split(",")
    try:
        return int(text) if len(parts) == 1 else tuple(float(p) for p in parts)
    except ValueError:
        raise InputError(f"--box {text!r} is not an index or X1,Y1,X2,Y2.") from None


def _write_maps(res, out: Path, fmt: str) -> dict[str, str]:
    """The maps as cams.npz or one .npy per (method, layer); returns what went where."""
    if fmt == "npz":
        res.save(out / "cams.npz")
        return {"explanation": "cams.npz"}
    written, taken = {}, set()
    for m, layer in res.maps:
        name = written[f"{m}/{layer}"] = _file_name("cam", m, layer, taken)
        cam = res.cam(m, layer)
        write_atomic(out / name, lambda handle, cam=cam: np.save(handle, cam))
    for m, attribution in res.attributions.items():  # signed, channels first
        name = written[f"{m}/attribution"] = _file_name("attribution", m, "input", taken)
        write_atomic(out / name, lambda handle, a=attribution: np.save(handle, a))
    return written


def _plot(args, res, x, out: Path) -> list[Path]:
    from ..viz import save_figures
    names = args.channel_names.split(",") if args.channel_names else None
    return save_figures(res, x, out / "figures", fs=args.fs, channel_names=names,
                        cmap=args.cmap)


def _summary(model, res, files: list[Path], counts: list[int], pre, written: dict) -> dict:
    """Everything about the run and, per row (item, target, foil), scores and map ranges."""
    starts = np.cumsum([0, *counts])
    file_of_item = np.repeat(np.arange(len(files)), counts)
    keys = res.maps
    names = res.class_names

    def name(k):
        return None if k is None or names is None else names[k]

    rows = []
    for r in range(len(res)):
        item, target = int(res.items[r]), int(res.targets[r])
        foil = None if res.foils is None else int(res.foils[r])
        dense = res.logits.ndim > 2  # segmentation / detection: no one class per row
        predicted = None if dense else int(res.predicted[r])
        rows.append({
            "item": item, "file": os.fspath(files[file_of_item[item]]),
            "target": target, "target_name": name(target), "foil": foil, "foil_name": name(foil),
            "predicted": predicted, "predicted_name": name(predicted),
            "probability": None if dense else float(res.probs[r, target]),
            "flags": res.flag_reasons(r),
            "probabilities": None if dense else res.probs[r].tolist(),
            "score_ranges": {f"{m}/{layer}": res.score_range(m, layer)[r].tolist()
                             for m, layer in keys},
            # per-row extras of input attributions, e.g. integrated gradients' completeness gap
            "info": {m: {k: float(v[r]) for k, v in extras.items()}
                     for m, extras in res.infos.items() if extras}})
    return {
        "model": os.fspath(model), "items": int(starts[-1]), "maps": len(res),
        "inputs": [{"file": os.fspath(f), "items": [int(a), int(b)]}
                   for f, a, b in zip(files, starts[:-1], starts[1:])],
        "methods": res.methods, "layers": res.layers, "head": res.head, "score": res.score,
        "class_names": names, "preprocess": dataclasses.asdict(pre), "files": written,
        "rows": rows,
    }


def run(args) -> None:
    summary = explain(args)
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        _print_table(summary, args.out)


def _print_table(summary: dict, out: str, shown: int = 20) -> None:
    rows = summary["rows"]
    print(f"{'item':>5}  {'target':<16} {'predicted':<16} {'p(target)':>9}  file")
    for row in rows[:shown]:
        target = row["target_name"] or row["target"]
        if row["foil"] is not None:
            target = f"{target} vs {row['foil_name'] or row['foil']}"
        predicted = row["predicted_name"] or row["predicted"]
        p = "-" if row["probability"] is None else f"{row['probability']:.3f}"
        print(f"{row['item']:>5}  {target!s:<16} {predicted!s:<16} {p:>9}  {row['file']}")
    if len(rows) > shown:
        print(f"  ... {len(rows) - shown} more rows in summary.json")
    maps = [f for key, f in summary["files"].items() if key != "figures"]
    files = ", ".join(os.path.join(out, f) for f in [*maps, "summary.json"][:4])
    more = " ..." if len(maps) > 3 else ""
    items = f"{summary['items']} item" + "s" * (summary["items"] != 1)
    print(f"explained {items} ({summary['maps']} maps per method and layer; "
          f"{', '.join(summary['methods'])} on {', '.join(summary['layers'])}) -> {files}{more}")
    figures = summary["files"].get("figures", [])
    if figures:
        print(f"{len(figures)} figure" + "s" * (len(figures) != 1) + ":")
        for figure in figures:
            print(os.path.join(out, figure))
