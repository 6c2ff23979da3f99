"""Float dtypes narrower than float32 (float16, bfloat16): what onnx-cam feeds and reads as
float32 around a graph that computes in them.

The forward graph keeps its own dtypes; its input is fed as float32 and cast inside the graph,
and the gradient subgraph reads float32 casts of the forward tensors it needs (see
GradBuilder.float32), so gradients are accumulated in float32.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

# onnx-graphsurgeon holds bfloat16 as the ONNX enum (numpy has no bfloat16)
HALF_TYPES = {onnx.TensorProto.FLOAT16: np.dtype(np.float16),
              onnx.TensorProto.BFLOAT16: onnx.TensorProto.BFLOAT16}


def onnx_type(dtype) -> int | None:
    """The ONNX element type of a graphsurgeon dtype (a numpy dtype or an ONNX enum)."""
    if dtype is None:
        return None
    if isinstance(dtype, int):
        return dtype
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except (KeyError, TypeError, ValueError):
        return None


def is_half(dtype) -> bool:
    """float16 or bfloat16."""
    return onnx_type(dtype) in HALF_TYPES


def is_float(dtype) -> bool:
    """Any floating-point element type (float16, bfloat16, float32, float64)."""
    return onnx_type(dtype) in (*HALF_TYPES, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)


def float32_input(graph: gs.Graph, name: str) -> None:
    """Feed a graph whose input `name` is 16-bit float from a float32 input of the same name,
    cast to the model's dtype inside the graph."""
    old = next(t for t in graph.inputs if t.name == name)
    new = fed_as_float32(graph, old)
    if new is not old:
        old.name, new.name = f"{name}/onnx_cam_narrow", name
        graph.inputs = [new if t is old else t for t in graph.inputs]


def fed_as_float32(graph: gs.Graph, tensor: gs.Variable) -> gs.Variable:
    """A new float32 tensor that `tensor` (16-bit float) is cast from inside `graph`, to make
    `tensor` a graph input fed in float32; `tensor` itself when it is not 16-bit."""
    if not is_half(tensor.dtype):
        return tensor
    wide = gs.Variable(f"{tensor.name}/onnx_cam_float32", dtype=np.float32, shape=tensor.shape)
    graph.nodes.insert(0, gs.Node("Cast", f"{tensor.name}/onnx_cam_cast",
                               {"to": onnx_type(tensor.dtype)}, [wide], [tensor]))
    return wide


def float32_view(graph: gs.Graph, tensor: gs.Variable, name: str) -> gs.Variable:
    """`tensor` cast to a new float32 tensor `name` at the end of `graph` if it is 16-bit
    float; `tensor` itself otherwise."""
    if not is_half(tensor.dtype):
        return tensor
    wide = gs.Variable(name, dtype=np.float32, shape=tensor.shape)
    graph.nodes.append(gs.Node("Cast", f"{name}/cast", {"to": onnx.TensorProto.FLOAT},
                               [tensor], [wide]))
    return wide
