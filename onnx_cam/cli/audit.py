"""`onnx-cam audit MODEL.onnx DATASET --store STORE`: explain a whole dataset into a Zarr store."""

from __future__ import annotations

import argparse
import json

from ..progress import wanted
from .options import add_job_options, parse_class, preprocess_overrides

EXAMPLE = """\
examples:
  onnx-cam audit model.onnx signals.npy --store audit.zarr --labels labels.npy
  onnx-cam audit model.onnx images/ --store audit.zarr --method gradcam --method hirescam
  onnx-cam audit model.onnx data.zarr --key inputs --store s3://bucket/audit.zarr \\
      --scheduler tcp://scheduler:8786

Run the same command again after a crash or a kill: it finishes the chunks not yet done and
the store ends identical to an uninterrupted run's. A store written with another model,
dataset or arguments is refused unless --overwrite.
"""


def add_parser(sub):
    parser = sub.add_parser(
        "audit", help="explain a whole dataset into a resumable Zarr store",
        description="Explain every item of a dataset; writes a Zarr store with the CAMs "
                    "(float16, chunked by item), logits, probabilities, predictions, score "
                    "ranges, per-class mean / std maps, a manifest and summary.parquet.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an .onnx file (Dask workers must be able to read it)")
    parser.add_argument("dataset", help="a .npy file (memory-mapped), a .zarr store or URL, an "
                        ".h5 / .hdf5 file, or a folder with one input file per item")
    parser.add_argument("--store", required=True,
                        help="the output Zarr store: a folder or an fsspec URL")
    parser.add_argument("--key", help="the array inside a Zarr group / HDF5 file")
    parser.add_argument("--input", metavar="NAME",
                        help="a model with several inputs (the dataset: a .npz or a Zarr "
                             "group with one array per input name): the input the maps cover "
                             "(default: the one the layers are computed from)")
    parser.add_argument("--labels", help="true classes: a .npy file or a text file with one "
                        "class index or name per line")
    parser.add_argument("--method", action="append", dest="methods",
                        help="CAM or input-attribution method, repeatable (default gradcam)")
    parser.add_argument("--layer", action="append", dest="layers",
                        help="layer name, repeatable (default auto: the deepest)")
    parser.add_argument("--target", default="pred",
                        help="pred (default), label (the true class, needs --labels), a class "
                             "index or a class name")
    parser.add_argument("--foil", help="contrastive class index or name")
    parser.add_argument("--score", default="logits", choices=["logits", "log_probs", "probs"])
    parser.add_argument("--batch-size", type=int, default=64, help="items per ONNX Runtime "
                        "run (default 64)")
    parser.add_argument("--chunk-items", type=int, default=256,
                        help="items per job chunk, the unit of resume and of Dask tasks "
                             "(default 256)")
    parser.add_argument("--cam-dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--metric", action="append", dest="metrics", default=[],
                        help="store this onnx_cam.metrics value per item and map, repeatable "
                             "(e.g. deletion, insertion, road, avg_drop; see onnx-cam "
                             "evaluate --help)")
    add_job_options(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    return parser


def run(args) -> None:
    from ..audit import run as run_audit
    store = run_audit(args.model, args.dataset, args.store, methods=args.methods or "gradcam",
                      layers=args.layers or "auto",
                      target="pred" if args.target == "pred" else parse_class(args.target),
                      foil=parse_class(args.foil), labels=args.labels, key=args.key,
                      preprocess=preprocess_overrides(args),
                      score=args.score, batch_size=args.batch_size,
                      chunk_items=args.chunk_items, cam_dtype=args.cam_dtype,
                      overwrite=args.overwrite, scheduler=args.scheduler,
                      workers=args.workers, metrics=args.metrics,
                      progress=wanted(args.quiet), input=args.input)
    manifest = store.manifest
    if args.json:
        print(json.dumps(manifest, indent=2))
    elif not args.quiet:
        print(f"audited {manifest['items']} items ({manifest['failed_items']} failed) -> "
              f"{args.store}")
