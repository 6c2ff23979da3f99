"""`onnx-cam report STORE --out report.html`: a self-contained HTML page about an audit."""

from __future__ import annotations

import argparse


def add_parser(sub):
    parser = sub.add_parser(
        "report", help="an HTML report of a finished audit store",
        description="Write one self-contained HTML page (figures embedded, no external "
                    "files): the run, prediction and confidence histograms, the confusion "
                    "table, per-class mean / std CAMs and the items whose maps differ most "
                    "from their class mean.",
        epilog="example:\n  onnx-cam report audit.zarr --out report.html",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", help="an audit store written by onnx-cam audit")
    parser.add_argument("--out", required=True, help="the HTML file to write")
    parser.add_argument("--outliers", type=int, default=8,
                        help="how many most-atypical items to show per map (default 8)")
    return parser


def run(args) -> None:
    from ..audit.report import write_report
    path = write_report(args.store, args.out, outliers=args.outliers)
    print(f"report -> {path}")
