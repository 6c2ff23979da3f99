"""`onnx-cam compare MODEL DATASET --method ... --metric ... --out DIR`: every method x metric
over a dataset, for one or several models, into a table and an HTML page."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InputError
from ..progress import wanted
from .options import add_job_options, parse_class, preprocess_overrides

EXAMPLE = """\
examples:
  onnx-cam compare model.onnx signals.npy --out cmp --method gradcam \\
      --method integrated_gradients --metric deletion --metric road --labels labels.npy
  onnx-cam compare signals.npy --model resnet.onnx --model vgg.onnx --out cmp \\
      --method gradcam --method hirescam --metric insertion --metric avg_drop
  onnx-cam compare model.onnx images/ --out cmp --layer layer3 --metric-option step=0.1

Writes DIR/comparison.parquet and .csv (one row per model x item x method x metric: the
value, and per item the seconds and inputs run of the method and of the metric),
DIR/comparison.html, and DIR/store.zarr (the resumable job). Run the same command again after
a crash or a kill: only the unfinished (model, chunk) tasks run. A store of another job is
refused, listing the differences, unless --overwrite.
"""


def add_parser(sub):
    parser = sub.add_parser(
        "compare", help="compare explanation methods by metrics over a dataset",
        description="Run every --method x --metric over every item of a dataset, for one or "
                    "several models; write a table (Parquet + CSV) and a self-contained HTML "
                    "page (radar per model, distributions, metric against cost, per class, "
                    "the items where the methods disagree most).",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL", help="an .onnx file (with --model: the "
                        "dataset, all models then come from --model)")
    parser.add_argument("dataset", metavar="DATASET", nargs="?",
                        help="a .npy file, a .zarr store or URL, an .h5 / .hdf5 file, or a "
                             "folder with one input file per item")
    parser.add_argument("--model", action="append", dest="models", default=[],
                        help="one more model, repeatable; models are named by their file "
                             "stems (same dataset for all)")
    parser.add_argument("--out", required=True, help="the output folder")
    parser.add_argument("--method", action="append", dest="methods",
                        help="a CAM or input-attribution method, repeatable (default gradcam)")
    parser.add_argument("--metric", action="append", dest="metrics",
                        help="an onnx_cam.metrics name, repeatable (default deletion; see "
                             "onnx-cam evaluate --help)")
    parser.add_argument("--metric-option", action="append", dest="metric_options", default=[],
                        metavar="KEY=VALUE", help="an option of the metrics, repeatable: "
                        "step=0.1, baseline=zero, score=logits (VALUE is read as JSON, else "
                        "as text)")
    parser.add_argument("--layer", action="append", dest="layers", default=[],
                        help="the CAMs' layer: NAME for every model or MODEL=NAME for one "
                             "(default auto: each model's deepest candidate)")
    parser.add_argument("--key", help="the array inside a Zarr group / HDF5 file")
    parser.add_argument("--labels", help="true classes (.npy, or a text file with one class "
                        "index or name per line): the per-class breakdown uses them")
    parser.add_argument("--target", default="pred",
                        help="pred (default), label (needs --labels), a class index or name")
    parser.add_argument("--score", default="logits", choices=["logits", "log_probs", "probs"],
                        help="what the methods explain (the metrics' score: --metric-option "
                             "score=...)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="inputs per ONNX Runtime run (default 64)")
    parser.add_argument("--chunk-items", type=int, default=256,
                        help="items per task, the unit of resume and of Dask (default 256)")
    parser.add_argument("--disagreements", type=int, default=6,
                        help="items shown with their maps per model (default 6)")
    add_job_options(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    return parser


def run(args) -> None:
    from ..comparison import compare
    if args.dataset is None and not args.models:
        raise InputError("Give MODEL DATASET, or DATASET with one --model per model.")
    paths = [args.model] if args.dataset is None else [args.model, args.dataset]
    models = [*paths[:-1], *args.models]
    result = compare(models, paths[-1], args.out, methods=args.methods or ["gradcam"],
                     metrics=args.metrics or ["deletion"], layer=_layers(args.layers, models),
                     target="pred" if args.target == "pred" else parse_class(args.target),
                     labels=args.labels, key=args.key,
                     preprocess=preprocess_overrides(args), score=args.score,
                     metric_options=dict(map(_option, args.metric_options)),
                     batch_size=args.batch_size, chunk_items=args.chunk_items,
                     overwrite=args.overwrite, scheduler=args.scheduler, workers=args.workers,
                     disagreements=args.disagreements, progress=wanted(args.quiet))
    if not args.quiet:
        print(f"{result.table().num_rows} rows -> {result.table_path}, {result.csv_path}; "
              f"page: {result.page_path}")


def _layers(given: list[str], models: list[str]):
    """"auto", one layer for every model, or {model name: layer} from NAME / MODEL=NAME."""
    stems = {Path(m).stem for m in models}
    per_model = dict(g.split("=", 1) for g in given if g.split("=", 1)[0] in stems)
    common = [g for g in given if g.split("=", 1)[0] not in stems]
    if len(common) > 1:
        raise InputError(f"--layer {common}: give one layer for every model, or MODEL=NAME "
                         f"per model (models: {sorted(stems)}).")
    if not per_model:
        return common[0] if common else "auto"
    return {stem: per_model.get(stem, common[0] if common else "auto") for stem in stems}


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InputError(f"--metric-option {text!r}: write KEY=VALUE, e.g. step=0.1.")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value
