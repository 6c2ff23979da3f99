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
  onnx-cam layers model.onnx --top 10
  onnx-cam layers model.onnx --op Conv,Relu --match layer4
  onnx-cam layers model.onnx --json > layers.json"""


def add_parser(sub):
    parser = sub.add_parser("layers", help="the model's input, head and candidate layers",
                            description=DESCRIPTION, epilog=EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an .onnx file")
    parser.add_argument("--json", action="store_true",
                        help="print the same as JSON (default: a table)")
    parser.add_argument("--top", type=_positive, metavar="K",
                        help="show only the K deepest layers (after --op and --match)")
    parser.add_argument("--op", type=_op_list, metavar="OPS",
                        help="show only layers made by these ops, comma-separated: Conv,Relu")
    parser.add_argument("--input", metavar="NAME",
                        help="a model with several inputs: list the layers computed from "
                             "this input (default: the first (N, C, *spatial) input)")
    parser.add_argument("--match", metavar="TEXT",
                        help="show only layers whose name, tensor name or node name contains "
                             "TEXT")
    return parser


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _op_list(text: str) -> frozenset[str]:
    ops = frozenset(op.strip() for op in text.split(",") if op.strip())
    if not ops:
        raise argparse.ArgumentTypeError("expected op names separated by commas, e.g. Conv,Relu")
    return ops


def describe(model, input: str | None = None) -> dict:
    """What `layers` prints, for anything Explainer takes (a path, bytes, a ModelProto);
    input: of a model with several inputs, the one whose layers are listed."""
    exp = Explainer(model, input=input)
    others = {"other_inputs": {name: [d if isinstance(d, int) else None for d in shape]
                               for name, (shape, _) in exp.model.side_inputs.items()}
              } if exp.model.side_inputs else {}
    return {"input": {"name": exp.model.input_name,
                      "shape": list(exp.model.input_shape),  # None: any size
                      "channels_last": exp.model.channels_last},
            **others,
            "head": exp.head, "classes": exp.num_classes, "class_names": exp.class_names,
            "layers": [{"name": layer.name, "tensor": layer.tensor, "op": layer.op,
                        "shape": [d if isinstance(d, int) else str(d) for d in layer.shape],
                        "aliases": list(layer.aliases)}
                       for layer in exp.layer_info],
            "hidden": 0}


def select_layers(info: dict, top: int | None = None, ops: frozenset[str] | None = None,
                  match: str | None = None) -> dict:
    """describe()'s result with only the layers asked for (still deepest first); "hidden"
    counts the others."""
    layers = [layer for layer in info["layers"]
              if (ops is None or layer["op"] in ops)
              and (match is None or any(match in name for name in
                                        (layer["name"], layer["tensor"], *layer["aliases"])))]
    shown = layers[:top] if top is not None else layers
    return {**info, "layers": shown, "hidden": info["hidden"] + len(info["layers"]) - len(shown)}


def print_description(info: dict) -> None:
    """The human-readable form of describe()'s result."""
    shape = ", ".join("N" if i == 0 and d is None else "any" if d is None else str(d)
                      for i, d in enumerate(info["input"]["shape"]))
    layout = "channels-last" if info["input"]["channels_last"] else "channels-first"
    print(f"input   {info['input']['name']} ({shape}), {layout}")
    for name, dims in info.get("other_inputs", {}).items():
        print(f"        {name} ({', '.join('N' if d is None else str(d) for d in dims)}), "
              "fed as given (--input NAME lists the layers of another input)")
    print(f"head    {info['head'] or 'none (the output is explained)'}")
    names = info["class_names"]
    print(f"classes {info['classes']}" + (f": {', '.join(names)}" if names else ""))
    print("layers (deepest first; the first is --layer auto):")
    rows = info["layers"]
    name_width = max((len(layer["name"]) for layer in rows), default=0)
    op_width = max((len(layer["op"]) for layer in rows), default=0)
    for layer in rows:
        print(f"  {layer['name']:<{name_width}}  {layer['op']:<{op_width}}  {layer['shape']}")
    if info["hidden"]:
        print(f"  ({info['hidden']} more not shown: --top, --op and --match choose which)")


def run(args) -> None:
    info = select_layers(describe(args.model, args.input), args.top, args.op, args.match)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print_description(info)
