"""Options shared by subcommands: class arguments and the preprocessing of image / CSV files."""

from __future__ import annotations

import argparse
import dataclasses
from fractions import Fraction

from ..inputs import Preprocess, preprocess_for


def fraction(text: str) -> float:
    """A number written as 0.5 or 1/255."""
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number such as 0.5 or 1/255") from None


def parse_class(value: str | None):
    """A --target / --foil value: None for pred / absent, an int index, or a name as given."""
    if value is None or value == "pred":
        return None
    return int(value) if value.lstrip("-").isdigit() else value


def add_preprocess_options(parser, title: str) -> None:
    pre = parser.add_argument_group(title)
    pre.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                     help="resize images to H x W, bilinear (default: the model's input size "
                          "when fixed, else each image's own)")
    pre.add_argument("--scale", type=fraction, default=None, metavar="S",
                     help="multiply pixel values by S, e.g. 1/255 or 0.5 (default: 1/255)")
    pre.add_argument("--mean", type=fraction, nargs="+", metavar="M",
                     help="subtract after scaling, one value per channel or one for all "
                          "(default: 0)")
    pre.add_argument("--std", type=fraction, nargs="+", metavar="SD",
                     help="then divide, one value per channel or one for all (default: 1)")
    pre.add_argument("--grayscale", action="store_true",
                     help="read images as 1 channel (default: when the model takes 1 channel, "
                          "else RGB)")
    pre.add_argument("--channels-last", action="store_true",
                     help="items as (H, W, C) / (T, C) (default: the model's own layout; "
                          "Keras models are channels-last)")
    pre.add_argument("--csv-transpose", action="store_true",
                     help="CSV files hold one row per channel (default: one column per "
                          "channel)")


def add_job_options(parser) -> None:
    """The options of resumable jobs over a dataset (audit, compare): the store, Dask, and
    how a folder of files is read."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a store written by another job")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running Dask scheduler")
    where.add_argument("--workers", type=int, help="start a local Dask cluster of N processes")
    add_preprocess_options(parser, "a folder of images / CSV signals (arrays are taken as "
                                   "they are)")


def preprocess_overrides(args) -> dict:
    """The Preprocess fields the options set (the others keep the model's defaults)."""
    given = {"size": args.size, "scale": args.scale, "mean": args.mean, "std": args.std,
             "mode": "L" if args.grayscale else None,
             "channels_first": False if args.channels_last else None,
             "transpose": args.csv_transpose or None}
    return {k: v for k, v in given.items() if v is not None}


def preprocess_from_args(args, explainer) -> Preprocess:
    """The model's defaults (onnx_cam.inputs.preprocess_for) with the options given."""
    return dataclasses.replace(preprocess_for(explainer), **preprocess_overrides(args))
