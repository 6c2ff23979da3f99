"""`onnx-cam layers MODEL.onnx`: the model's input, detected head and candidate target layers."""

from __future__ import annotations

import argparse
import json

from ..explainer import Explainer

DESCRIPTION = """\
Show what onnx-cam sees in a model: its input (shape and channel layout), the head whose
input is explained (Softmax, LogSoftmax, Sigmoid or none), the class names stored in the
model, and the candidate target layers, deepest first, with their shapes. The first one is
what `--layer auto` (the default of `onnx-cam explain`) picks; any of the names shown can be
given to --layer."""

EXAMPLES = """\
examples:
  onnx-cam layers model.onnx
  onnx-cam layers model.onnx --json > layers.json"""


def add_parser(sub):
    parser = sub.add_parser("layers", help="the model's input, head and candidate layers",
                            description=DESCRIPTION, epilog=EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an .onnx file")
    parser.add_argument("--json", action="store_true",
                        help="print the same as JSON (default: a table)")
    return parser


def describe(model) -> dict:
    """What `layers` prints, for anything Explainer takes (a path, bytes, a ModelProto)."""
    exp = Explainer(model)
    return {"input": {"name": exp.model.input_name,
                      "shape": list(exp.model.input_shape),  # None: any size
                      "channels_last": exp.model.channels_last},
            "head": exp.head, "classes": exp.num_classes, "class_names": exp.class_names,
            "layers": [{"name": layer.name, "tensor": layer.tensor, "op": layer.op,
                        "shape": [d if isinstance(d, int) else str(d) for d in layer.shape]}
                       for layer in exp.layer_info]}


def print_description(info: dict) -> None:
    """The human-readable form of describe()'s result."""
    shape = ", ".join("N" if i == 0 and d is None else "any" if d is None else str(d)
                      for i, d in enumerate(info["input"]["shape"]))
    layout = "channels-last" if info["input"]["channels_last"] else "channels-first"
    print(f"input   {info['input']['name']} ({shape}), {layout}")
    print(f"head    {info['head'] or 'none (the output is explained)'}")
    names = info["class_names"]
    print(f"classes {info['classes']}" + (f": {', '.join(names)}" if names else ""))
    print("layers (deepest first; the first is --layer auto):")
    for layer in info["layers"]:
        print(f"  {layer['name']:<32} {layer['op']:<20} {layer['shape']}")


def run(args) -> None:
    info = describe(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print_description(info)
