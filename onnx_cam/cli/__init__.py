"""The `onnx-cam` command. One module per subcommand, each with `add_parser(sub)` and `run(args)`.

    onnx-cam layers  MODEL.onnx                  the input, head and candidate layers
    onnx-cam explain MODEL.onnx INPUT... --out DIR
    onnx-cam evaluate MODEL.onnx INPUT... --out DIR   metrics of the maps (deletion, ROAD, ...)
    onnx-cam convert torch|keras ... --out MODEL.onnx
    onnx-cam compare MODEL.onnx DATASET --method ... --metric ... --out DIR

Exit codes: see EPILOG.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from .. import __version__
from ..errors import OnnxCamError
from . import audit, compare, convert, evaluate, explain, layers, report

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
SUBCOMMANDS = (layers, explain, convert, audit, report, evaluate, compare)

EPILOG = """\
start here:
  onnx-cam layers model.onnx                       what can be explained
  onnx-cam explain model.onnx x.npy --out results  maps + summary.json
  onnx-cam SUBCOMMAND --help                       options, defaults and examples

exit codes (for scripts):
  0    done
  1    internal error: a bug in onnx-cam (the traceback is printed; please report it)
  2    bad usage, a model, input or argument onnx-cam cannot use, or a file that
       cannot be written; the one-line message on stderr ("onnx-cam: error: ...")
       says what is wrong and what to do
  130  interrupted (Ctrl-C)"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnx-cam", description="Class-activation maps (Grad-CAM and relatives) for 1D, "
        "2D and 3D CNNs,\ncomputed on the model's ONNX graph.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"onnx-cam {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub).set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); returns the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse has printed
        return EXIT_OK if exc.code is None else exc.code if isinstance(exc.code, int) \
            else EXIT_USAGE
    try:
        args.run(args)
    except OnnxCamError as exc:
        print(f"onnx-cam: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("onnx-cam: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed early (| head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:  # the file system refused: a full disk, a read-only --out, ...
        print(f"onnx-cam: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:
        traceback.print_exc()
        print("onnx-cam: internal error (a bug in onnx-cam): please report it with the "
              "traceback above.", file=sys.stderr)
        return EXIT_INTERNAL
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
