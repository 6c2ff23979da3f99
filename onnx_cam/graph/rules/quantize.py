"""Gradients through quantisation, as quantisation-aware training defines them.

The gradient of an integer tensor is taken as if its values were real. QuantizeLinear passes
the gradient straight through, divided by its scale, where the input rounds into the integer
range, and sends zero where it saturates; DequantizeLinear multiplies by its scale. A
QuantizeLinear -> DequantizeLinear pair thus has the gradient of torch's
fake_quantize_per_tensor_affine / fake_quantize_per_channel_affine: one inside
[(qmin - zp - 1/2) s, (qmax - zp + 1/2) s], zero outside. Scales and zero points are treated
as constants (they carry no gradient), also those DynamicQuantizeLinear computes, whose range
covers its input by construction. ConvInteger and MatMulInteger are a Conv / MatMul of the
zero-point-shifted integers, differentiated as such.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..builder import rank
from ..precision import onnx_type
from . import register
from .conv import conv
from .linear import matmul

# integer range of each quantised element type
_RANGES = {onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255),
           onnx.TensorProto.INT16: (-32768, 32767), onnx.TensorProto.UINT16: (0, 65535),
           onnx.TensorProto.INT4: (-8, 7), onnx.TensorProto.UINT4: (0, 15)}


def _constant(tensor, what: str) -> np.ndarray:
    if not isinstance(tensor, gs.Constant):
        raise ValueError(f"its {what} is computed at run time")
    return np.asarray(tensor.values)


def _along_axis(values: np.ndarray, node, x) -> np.ndarray:
    """A per-tensor (scalar) or per-axis (1-D) scale or zero point shaped to broadcast over x."""
    if node.attrs.get("block_size", 0):
        raise ValueError("blocked quantisation (block_size) is not supported")
    if values.ndim == 0 or values.size == 1:
        return values.reshape(())
    shape = [1] * rank(x)
    shape[node.attrs.get("axis", 1) % rank(x)] = values.size
    return values.reshape(shape)


def _integer_range(node) -> tuple[int, int]:
    zero_point = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    kind = (onnx_type(zero_point.dtype) if zero_point is not None
            else node.attrs.get("output_dtype", 0) or onnx.TensorProto.UINT8)
    if kind not in _RANGES:
        raise ValueError(f"quantisation to {onnx.TensorProto.DataType.Name(kind)} is not "
                         "supported (integer types only)")
    return _RANGES[kind]


def _zero_point(node, x) -> np.ndarray:
    if len(node.inputs) > 2 and node.inputs[2].name:
        return _along_axis(_constant(node.inputs[2], "zero point").astype(np.float64), node, x)
    return np.zeros(())


@register("QuantizeLinear")
def quantize_linear(b, node, grads, wants):
    x, g = node.inputs[0], grads[0]
    scale = _along_axis(_constant(node.inputs[1], "scale").astype(np.float64), node, x)
    zero_point = _zero_point(node, x)
    qmin, qmax = _integer_range(node)
    # x rounds into [qmin, qmax] exactly when it lies in [low, high]
    low = ((qmin - zero_point - 0.5) * scale).astype(np.float32)
    high = ((qmax - zero_point + 0.5) * scale).astype(np.float32)
    inside = b.op("And", [b.op("GreaterOrEqual", [x, low], dtype=np.bool_),
                          b.op("LessOrEqual", [x, high], dtype=np.bool_)], dtype=np.bool_)
    passed = b.op("Div", [g, scale.astype(np.float32)])
    return [b.where(inside, passed, np.float32(0))] + [None] * (len(node.inputs) - 1)


@register("DequantizeLinear")
def dequantize_linear(b, node, grads, wants):
    x, scale = node.inputs[:2]
    if isinstance(scale, gs.Constant):
        factor = _along_axis(np.asarray(scale.values, np.float32), node, x)
    elif rank(scale) == 0 or node.attrs.get("block_size", 0):
        factor = scale
    else:
        raise ValueError("a per-axis scale computed at run time is not supported")
    return [b.mul(grads[0], factor)] + [None] * (len(node.inputs) - 1)


@register("DynamicQuantizeLinear")
def dynamic_quantize_linear(b, node, grads, wants):
    return [b.op("Div", [grads[0], node.outputs[1]])]


def _shifted(b, weights, zero_point, axis: int) -> gs.Constant:
    """Constant integer weights minus their zero point (per tensor or along `axis`), as
    float32: what ConvInteger / MatMulInteger multiply by."""
    values = _constant(weights, "weight").astype(np.float32)
    if zero_point is not None and zero_point.name:
        zp = _constant(zero_point, "weight zero point").astype(np.float32)
        if zp.size > 1:
            shape = [1] * values.ndim
            shape[axis] = zp.size
            zp = zp.reshape(shape)
        values = values - zp
    return b.const(values)


def _as_float_op(node, op: str, weights) -> SimpleNamespace:
    """A stand-in for `node` as the float op it computes, for that op's rule."""
    return SimpleNamespace(op=op, name=node.name, attrs=node.attrs,
                           inputs=[node.inputs[0], weights], outputs=node.outputs)


@register("ConvInteger")
def conv_integer(b, node, grads, wants):
    if any(wants[1:2]):
        raise ValueError("the convolution's weights depend on a target layer")
    zero_point = node.inputs[3] if len(node.inputs) > 3 else None
    weights = _shifted(b, node.inputs[1], zero_point, 0)
    grad = conv(b, _as_float_op(node, "Conv", weights), grads, [True, False])[0]
    return [grad] + [None] * (len(node.inputs) - 1)


@register("MatMulInteger")
def matmul_integer(b, node, grads, wants):
    if any(wants[1:2]):
        raise ValueError("the matrix product's right operand depends on a target layer")
    zero_point = node.inputs[3] if len(node.inputs) > 3 else None
    weights = _shifted(b, node.inputs[1], zero_point, -1)
    grad = matmul(b, _as_float_op(node, "MatMul", weights), grads, [True, False])[0]
    return [grad] + [None] * (len(node.inputs) - 1)
