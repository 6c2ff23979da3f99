"""`onnx-cam evaluate MODEL.onnx INPUT... --out DIR`: faithfulness and sanity metrics per map."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from ..explainer import Explainer
from ..explanation import Explanation
from ..files import write_json
from ..inputs import read_inputs
from ..metrics import DEFAULT_METRICS, METRICS, evaluate
from ..metrics.options import BASELINES, ORDERS, SCORE_KINDS
from .options import add_preprocess_options, parse_class, preprocess_from_args

EXAMPLES = """\
examples:
  onnx-cam explain model.onnx x.npy --out results --method hirescam
  onnx-cam evaluate model.onnx x.npy --cams results/cams.npz --out results \\
      --metric deletion --metric insertion --metric road --metric deletion_random
  onnx-cam evaluate ecg.onnx x.npy --out checks --metric randomization_spearman \\
      --metric random_label_spearman --json"""


def add_parser(sub):
    parser = sub.add_parser(
        "evaluate", help="faithfulness / sanity metrics of CAMs (deletion, ROAD, ...)",
        description="Evaluate the maps of the input items: those of --cams (an explanation "
                    "saved by `onnx-cam explain` for the same inputs), or maps computed here "
                    "with --method / --layer / --target. Writes DIR/metrics.json (one value "
                    "per map and metric, and their means); maps computed here go to "
                    "DIR/cams.npz.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an .onnx file")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="the inputs explained, as given to `onnx-cam explain` (arrays, "
                             "images, CSV signals, folders) with the same preprocessing options")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument("--cams", help="cams.npz from `onnx-cam explain` for these inputs")
    parser.add_argument("--metric", action="append", dest="metrics", choices=METRICS,
                        metavar="NAME", help="metric, repeatable (default: "
                        f"{' '.join(DEFAULT_METRICS)}); any of {', '.join(METRICS)}")
    parser.add_argument("--method", help="CAM method (default gradcam, or the one in --cams)")
    parser.add_argument("--layer", help="layer (default auto, or the one in --cams)")
    parser.add_argument("--target", default="pred",
                        help="without --cams: pred (predicted class), a class index or name")
    parser.add_argument("--foil", help="without --cams: contrastive class index or name")
    parser.add_argument("--score", choices=SCORE_KINDS,
                        help="score read off the model (default probs)")
    parser.add_argument("--step", type=float, default=0.05,
                        help="deletion / insertion step, a fraction of the input (default 0.05)")
    parser.add_argument("--order", choices=ORDERS, default="morf",
                        help="deletion / insertion order: most / least relevant first")
    parser.add_argument("--baseline", choices=BASELINES,
                        help="what replaces removed positions (default: mean for signals, "
                             "blur for images and volumes)")
    parser.add_argument("--blur-sigma", type=float, default=5.0,
                        help="blur baseline's Gaussian sigma in samples (default 5)")
    parser.add_argument("--road-noise", type=float, default=0.01,
                        help="ROAD imputation noise std, in input units (default 0.01)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds noise, random maps / labels, randomised weights")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="perturbed copies per ONNX Runtime run (default 64)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_preprocess_options(parser, "images and CSV signals (as given to `onnx-cam explain`)")
    return parser


def _number(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None   # JSON has no NaN


def evaluate_files(args) -> dict:
    exp = Explainer(args.model)
    x = read_inputs(args.inputs, preprocess_from_args(args, exp),
                    item_shape=exp.model.input_shape[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.cams:
        res = Explanation.load(args.cams)
    else:
        res = exp.explain(x, targets=parse_class(args.target), foils=parse_class(args.foil),
                          layers=args.layer or "auto", methods=args.method or "gradcam",
                          batch_size=args.batch_size)
        res.save(out / "cams.npz")
    method, layer = args.method, args.layer
    metrics = args.metrics or list(DEFAULT_METRICS)
    values = evaluate(exp, x, res, metrics, method=method, layer=layer, score=args.score,
                      step=args.step, order=args.order, baseline=args.baseline,
                      blur_sigma=args.blur_sigma, road_noise=args.road_noise, seed=args.seed,
                      batch_size=args.batch_size)
    rows = []
    for r in range(len(res)):
        row = {"item": int(res.items[r]), "target": int(res.targets[r])}
        if res.foils is not None:
            row["foil"] = int(res.foils[r])
        row.update({name: _number(values[name][r]) for name in metrics})
        rows.append(row)
    means = {name: _number(np.nanmean(values[name])) if np.isfinite(values[name]).any()
             else None for name in metrics}
    summary = {"model": os.fspath(args.model), "items": len(x),
               "method": method or res.methods[0], "layer": layer or res.layers[0],
               "metrics": metrics, "mean": means, "rows": rows}
    write_json(out / "metrics.json", summary)
    return summary


def run(args) -> None:
    summary = evaluate_files(args)
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{len(summary['rows'])} maps ({summary['method']}, {summary['layer']}) -> "
          f"{args.out}/metrics.json")
    for name, mean in summary["mean"].items():
        print(f"  {name:<24} {'n/a' if mean is None else f'{mean:.4f}'}")
