"""`onnx-cam layers MODEL.onnx`: the model's input, detected head and candidate target layers."""

from __future__ import annotations

import json

from ..explainer import Explainer


def add_parser(sub):
    parser = sub.add_parser("layers", help="the model's input, head and candidate layers")
    parser.add_argument("model", help="an .onnx file")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def describe(model_path) -> dict:
    exp = Explainer(model_path)
    return {"input": {"name": exp.model.input_name, "shape": list(exp.model.input_shape)},
            "head": exp.head, "classes": exp.num_classes, "class_names": exp.class_names,
            "layers": [{"name": layer.name, "tensor": layer.tensor, "op": layer.op,
                        "shape": [d if isinstance(d, int) else str(d) for d in layer.shape]}
                       for layer in exp.layer_info]}


def run(args) -> None:
    info = describe(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"input  {info['input']['name']} {info['input']['shape']}")
    print(f"head   {info['head']}  ({info['classes']} classes)")
    print("layers (deepest first):")
    for layer in info["layers"]:
        print(f"  {layer['name']:<32} {layer['op']:<20} {layer['shape']}")
