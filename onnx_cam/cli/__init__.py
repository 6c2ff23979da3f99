"""The `onnx-cam` command. One module per subcommand, each with `add_parser(sub)` and `run(args)`.

    onnx-cam layers  MODEL.onnx                  the input, head and candidate layers
    onnx-cam explain MODEL.onnx INPUT... --out DIR

Exit codes: 0 done, 2 bad usage or bad input (an OnnxCamError: the message says what to do).
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import OnnxCamError
from . import audit, explain, layers, report

EXIT_OK, EXIT_USAGE = 0, 2
SUBCOMMANDS = (layers, explain, audit, report)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnx-cam", description="Class-activation maps for CNNs on ONNX models.")
    parser.add_argument("--version", action="version", version=f"onnx-cam {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub).set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except OnnxCamError as exc:
        print(f"onnx-cam: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
