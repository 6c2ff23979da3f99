"""`onnx-cam convert torch|keras ...`: the converters (onnx_cam.converters) from the shell."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from ..errors import InputError, ModelLoadError
from ..files import write_atomic
from . import layers

DESCRIPTION = """\
Convert a PyTorch or Keras model to an ONNX file annotated for onnx-cam: the framework's
layer names (--layer layer4, --layer conv2), the channel layout and the class names are
stored in the model. The file is checked by loading it as onnx-cam would, then written
(whole or not at all); what `onnx-cam layers` shows is printed."""

EXAMPLES = """\
examples:
  onnx-cam convert torch mypkg.models:make_resnet --weights best.pt \\
      --input-shape 1,12,5000 --class-names normal,af,other --out ecg.onnx
  onnx-cam convert keras model.keras --out model.onnx --class-names-file classes.txt"""

TORCH_DESCRIPTION = """\
Build the model by calling FACTORY from MODULE (imported as `python -m` would, with the
current folder on the import path), load --weights into it, trace it with a random input of
--input-shape and export it (TorchScript exporter, no constant folding, batch axis
dynamic, other axes fixed at the sizes given)."""

TORCH_EXAMPLES = """\
examples:
  onnx-cam convert torch mypkg.models:make_resnet --weights best.pt \\
      --input-shape 1,12,5000 --out ecg.onnx
  onnx-cam convert torch models:Net --factory-args '{"classes": 5}' --weights ckpt.pt \\
      --weights-key state_dict --input-shape 1,3,224,224 --out net.onnx"""

KERAS_DESCRIPTION = """\
Convert a Keras model (a .keras or .h5 file) or a TensorFlow SavedModel directory with
tf2onnx (needs the `tf` extra: pip install 'onnx-cam[tf]'). Keras layer names become
onnx-cam layer names; a SavedModel carries none, so its layers go by ONNX names."""

KERAS_EXAMPLES = """\
examples:
  onnx-cam convert keras model.keras --out model.onnx --class-names cat,dog
  onnx-cam convert keras exported_savedmodel/ --out model.onnx"""


def add_parser(sub):
    parser = sub.add_parser("convert", help="a PyTorch or Keras model to an annotated .onnx",
                            description=DESCRIPTION, epilog=EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    frameworks = parser.add_subparsers(dest="framework", required=True, metavar="torch|keras")
    torch_parser = frameworks.add_parser(
        "torch", help="a torch.nn.Module built by a factory function, plus weights",
        description=TORCH_DESCRIPTION, epilog=TORCH_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    torch_parser.add_argument("factory", metavar="MODULE:FACTORY",
                              help="e.g. mypkg.models:make_model or models:Net (a class works)")
    torch_parser.add_argument("--input-shape", required=True, type=_shape, metavar="N,C,...",
                              help="example input shape, batch first, e.g. 1,12,5000")
    torch_parser.add_argument("--weights", metavar="FILE",
                              help="a state dict saved by torch.save, loaded with "
                                   "weights_only=True (default: the factory's own weights)")
    torch_parser.add_argument("--weights-key", metavar="KEY",
                              help="the entry of a checkpoint dict holding the state dict, "
                                   "e.g. state_dict (default: the file is the state dict)")
    torch_parser.add_argument("--factory-args", type=_json, default=None, metavar="JSON",
                              help="arguments for FACTORY: a JSON object (keywords) or list "
                                   "(positional) (default: none)")
    keras_parser = frameworks.add_parser(
        "keras", help="a .keras / .h5 file or a SavedModel directory",
        description=KERAS_DESCRIPTION, epilog=KERAS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    keras_parser.add_argument("source", metavar="MODEL", help="a .keras / .h5 file or a "
                                                              "SavedModel directory")
    for p in (torch_parser, keras_parser):
        p.add_argument("--out", required=True, metavar="FILE.onnx", help="the ONNX file to write")
        names = p.add_mutually_exclusive_group()
        names.add_argument("--class-names", type=_names, metavar="A,B,...",
                           help="class names, comma-separated, in output order (default: none)")
        names.add_argument("--class-names-file", metavar="FILE",
                           help="class names, one per line (default: none)")
        p.add_argument("--opset", type=int, default=17, help="ONNX opset, >= 17 (default: 17)")
        p.add_argument("--json", action="store_true",
                       help="print the converted model's description as JSON")
        p.add_argument("--quiet", action="store_true", help="print nothing on success")
    return parser


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) < 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a shape such as 1,12,5000: positive integers, batch first, "
            "then channels and 1 to 3 spatial sizes")
    return shape


def _json(text: str):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}); e.g. '{{\"classes\": 5}}'") from None
    if not isinstance(value, (dict, list)):
        raise argparse.ArgumentTypeError("give a JSON object (keywords) or list (positional)")
    return value


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",")]


def _class_names(args) -> list[str] | None:
    if args.class_names_file is None:
        return args.class_names
    try:
        lines = Path(args.class_names_file).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read the class names file {args.class_names_file} "
                         f"({exc}).") from None
    return [line.strip() for line in lines if line.strip()]


# ---- torch --------------------------------------------------------------------------------
def _import_factory(spec: str):
    """MODULE:FACTORY -> the callable, importing MODULE with the current folder on sys.path."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InputError(f"{spec!r} is not MODULE:FACTORY; e.g. mypkg.models:make_model.")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ModelLoadError(f"No module {module_name!r} ({exc}). Run onnx-cam from the "
                                 "folder that holds it, or add that folder to PYTHONPATH."
                                 ) from None
        raise ModelLoadError(f"Importing {module_name!r} failed: {exc}.") from None
    except Exception as exc:
        raise ModelLoadError(f"Importing {module_name!r} failed: "
                             f"{type(exc).__name__}: {exc}.") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(f"{module_name!r} has no {attr!r}; give the name of the "
                                 "function or class that builds the model.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelLoadError(f"{spec} is a {type(obj).__name__}, not a function or class.")
    return obj


def _load_weights(torch, module, path: str, key: str | None) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"The weights file {path} does not exist.") from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"{path} cannot be loaded as weights ({first}). onnx-cam loads only tensors "
            "(torch.load(weights_only=True)): save them with torch.save(model.state_dict(), "
            "path).") from None
    if key is not None:
        if not isinstance(state, dict) or key not in state:
            keys = list(state)[:10] if isinstance(state, dict) else type(state).__name__
            raise ModelLoadError(f"{path} has no entry {key!r} (it holds {keys}).")
        state = state[key]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path} holds a {type(state).__name__}, not a state dict; save "
                             "one with torch.save(model.state_dict(), path).")
    others = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if others:
        raise ModelLoadError(f"{path} is not a state dict (entries that are not tensors: "
                             f"{others[:10]}); name the entry that holds it with "
                             "--weights-key, e.g. state_dict.")
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelLoadError(f"The weights in {path} do not fit the model the factory built: "
                             f"{str(exc)[:800]}") from None


def convert_torch(args):
    """The ONNX model exported from the factory's module with the weights loaded."""
    try:
        import torch
    except ImportError:
        raise ModelLoadError("Converting a torch model needs torch: "
                             "pip install 'onnx-cam[torch]'.") from None
    import numpy as np

    from ..converters import export_torch

    factory = _import_factory(args.factory)
    extra = args.factory_args if args.factory_args is not None else {}
    try:
        module = factory(*extra) if isinstance(extra, list) else factory(**extra)
    except Exception as exc:
        raise ModelLoadError(f"Calling {args.factory} failed: {type(exc).__name__}: {exc}. "
                             "Pass its arguments with --factory-args.") from None
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"{args.factory} returned a {type(module).__name__}, not a "
                             "torch.nn.Module.")
    if args.weights is not None:
        _load_weights(torch, module, args.weights, args.weights_key)
    x = np.random.default_rng(0).standard_normal(args.input_shape).astype(np.float32)
    try:
        return export_torch(module, x, opset=args.opset, class_names=_class_names(args))
    except Exception as exc:
        raise ModelLoadError(f"Exporting {args.factory} to ONNX failed: {exc}") from None


# ---- keras --------------------------------------------------------------------------------
def convert_keras(args):
    """The ONNX model converted from a Keras file or a SavedModel directory."""
    from ..converters import export_keras

    if not os.path.exists(args.source):
        raise InputError(f"{args.source} does not exist; give a .keras / .h5 file or a "
                         "SavedModel directory.")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    try:
        return export_keras(args.source, opset=args.opset, class_names=_class_names(args))
    except ImportError as exc:
        raise ModelLoadError(f"Converting a Keras model needs TensorFlow and tf2onnx ({exc}): "
                             "pip install 'onnx-cam[tf]'.") from None
    except Exception as exc:
        raise ModelLoadError(f"Converting {args.source} failed: {exc}") from None


def run(args) -> None:
    proto = (convert_torch if args.framework == "torch" else convert_keras)(args)
    info = layers.describe(proto)  # refuses what onnx-cam cannot explain, before writing
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda handle: handle.write(proto.SerializeToString()))
    if args.json:
        print(json.dumps({"out": os.fspath(out), **info}, indent=2))
    elif not args.quiet:
        print(f"wrote {out}")
        layers.print_description(info)
