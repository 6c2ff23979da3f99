"""The attention probabilities of a vision transformer, found in its graph, for rollout maps.

They are the outputs (N, heads, T, T) of the Softmax nodes over all T tokens of the model's
patch grid (prefix tokens included), in graph order: what the TorchScript exporter, and the
dynamo exporter up to opset 22, write for timm's attention, fused (scaled_dot_product_attention)
or not. Refused, by name: the fused ONNX `Attention` op (opset 23) and ONNX Runtime's
contrib attention ops, whose probabilities are no tensor of the graph; windowed attention
(Swin), whose Softmax covers windows, not the grid; graphs without such a Softmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

from .cam_runs import seeded_values
from .errors import UnsupportedModelError
from .graph.cam_model import CamOutputs

FUSED_ATTENTION = frozenset({"Attention", "MultiHeadAttention", "GroupQueryAttention",
                             "PackedAttention", "PackedMultiHeadAttention"})


@dataclass(frozen=True)
class Attention:
    """The attention probabilities' tensors, in graph order, and the tokens they cover."""

    tensors: tuple[str, ...]
    prefix: int
    grid: tuple[int, ...]


def find_attention(model, spatial: tuple[int, ...]) -> Attention:
    """The model's attention probabilities (see the module's docstring), or a refusal."""
    graph = model.graph(spatial)
    fused = sorted({n.op for n in graph.nodes if n.op in FUSED_ATTENTION})
    if fused:
        raise UnsupportedModelError(
            f"The model computes attention with the fused {'/'.join(fused)} op, whose "
            "attention probabilities are not a tensor of the graph, so rollout cannot read "
            "them. Export with opset <= 22 (torch.onnx.export(..., opset_version=18) writes "
            "MatMul / Softmax), or onnx_cam.converters.export_torch.")
    by_count = {v.prefix + prod(v.grid): (v.prefix, v.grid) for v in model.token_views.values()}
    if not by_count:
        raise UnsupportedModelError(
            "Attention rollout reads attention over a transformer's tokens, and no token layer "
            "(N, tokens, C) with a patch grid was found in this model (see Explainer.layers; "
            "Explainer(..., grid=, prefix_tokens=) names it when the search fails).")
    found: dict[int, list[str]] = {}
    windowed = []
    for node in graph.nodes:
        out = node.outputs[0]
        if node.op != "Softmax" or out.shape is None or len(out.shape) != 4:
            continue
        if out.shape[2] != out.shape[3]:
            continue
        if out.shape[3] in by_count and node.attrs.get("axis", -1) in (-1, 3):
            found.setdefault(out.shape[3], []).append(out.name)
        else:
            windowed.append(out.name)
    if windowed or len(found) != 1:
        what = (f"{len(windowed)} Softmax nodes over sets of positions that are not the "
                "grid's tokens (windowed attention, as Swin's)" if windowed
                else "no Softmax (N, heads, T, T) over its T tokens" if not found
                else f"attention over token sets of several sizes {sorted(found)}")
        raise UnsupportedModelError(
            f"Attention rollout needs one global attention over all tokens; this model has "
            f"{what}. Use a CAM method on a layer from Explainer.layers instead.")
    (tokens, names), = found.items()
    prefix, grid = by_count[tokens]
    return Attention(tuple(names), prefix, tuple(grid))


def attention_runner(explainer, score: str, batch: int, side=None):
    """attention(x, seeds, gradients) -> (probabilities, d score / d probabilities or None):
    lists over the blocks of (n, heads, T, T), from one seeded run per batch; `side`: the
    other inputs of x's items (SideInputs) for a model with several inputs."""
    def attention(x: np.ndarray, seeds: np.ndarray, gradients: bool):
        spatial = explainer.model.spatial_of(x)
        found = find_attention(explainer.model, spatial)
        acts, grads = seeded_values(explainer, found.tensors, CamOutputs(score, gradients),
                                    x, seeds, side, batch)
        if any(a.shape[0] != len(x) for a in (*acts, *grads)):  # heads over windows
            raise UnsupportedModelError(
                "Attention rollout needs one global attention over all tokens; this model's "
                "Softmax nodes run over windows of each item (windowed attention, as Swin's). "
                "Use a CAM method on a layer from Explainer.layers instead.")
        return found, acts, (grads if gradients else None)
    return attention
