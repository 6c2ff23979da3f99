"""Upgrading old models to opset 17 without changing what they compute.

onnx's version converter turns Upsample (opsets 7-9) and Resize-10 into a Resize-11+ node
with default attributes, i.e. half_pixel coordinates and round_prefer_floor, while the old
ops sample at asymmetric coordinates (x_out / scale) and ONNX Runtime rounds their nearest
source index down when enlarging and up when shrinking. Linear resizes then differ by up to
a quarter of the input's range. The upgraded nodes get the old semantics back explicitly.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper, version_converter

from .errors import UnsupportedModelError


def upgrade(proto: onnx.ModelProto, opset: int, target: int = 17) -> onnx.ModelProto:
    upgraded = version_converter.convert_version(proto, target)
    if opset >= 11:
        return upgraded
    # the converter keeps the node order but renames tensors: pair the resizes in order
    legacy = [n for n in proto.graph.node if n.op_type in ("Upsample", "Resize")]
    resizes = [n for n in upgraded.graph.node if n.op_type == "Resize"]
    if len(legacy) != len(resizes):
        raise UnsupportedModelError(
            f"Upgrading this opset {opset} model to opset {target} changed its number of "
            "resize nodes, so their semantics cannot be kept. Re-export it with "
            "opset_version=17."
        )
    for old, node in zip(legacy, resizes):
        attrs = {"coordinate_transformation_mode": "asymmetric"}
        if _mode(old) == "nearest":
            attrs["nearest_mode"] = _nearest_mode(old, _scales(proto, old))
        kept = [a for a in node.attribute if a.name not in attrs]
        del node.attribute[:]
        node.attribute.extend(kept + [onnx.helper.make_attribute(k, v) for k, v in attrs.items()])
    return upgraded


def _mode(node) -> str:
    for a in node.attribute:
        if a.name == "mode":
            return a.s.decode()
    return "nearest"


def _scales(proto: onnx.ModelProto, node) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "scales":
            return np.array(a.floats, np.float32)
    if len(node.input) < 2:
        return None
    for init in proto.graph.initializer:
        if init.name == node.input[1]:
            return numpy_helper.to_array(init)
    for const in proto.graph.node:
        if const.op_type == "Constant" and const.output[0] == node.input[1]:
            return numpy_helper.to_array(const.attribute[0].t)
    return None


def _nearest_mode(node, scales) -> str:
    """ONNX Runtime's rule before opset 11: floor when enlarging, ceil when shrinking."""
    if scales is None:
        raise UnsupportedModelError(
            f"{node.op_type} node {node.name!r} (opset < 11) takes its scales at run time, so "
            "its nearest rounding cannot be kept when upgrading the model to opset 17. "
            "Re-export the model with opset_version=17."
        )
    resized = [s for s in np.asarray(scales).reshape(-1) if s != 1]
    if resized and min(resized) < 1 < max(resized):
        raise UnsupportedModelError(
            f"{node.op_type} node {node.name!r} (opset < 11) enlarges some axes and shrinks "
            "others; no opset 17 Resize rounds both as it did. Re-export the model with "
            "opset_version=17."
        )
    return "ceil" if resized and max(resized) < 1 else "floor"
