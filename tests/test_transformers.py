"""Vision transformers: CAMs over patch grids found in the graph, against pytorch-grad-cam
1.5.7 with its reshape transforms; rollout against a direct torch implementation; 1D and 3D
patch transformers against torch autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import export_bytes
from references import pytorch_grad_cam, timm
from torch import nn

import onnx_cam

TARGETS = [1, 3]
SMALL = dict(pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=5, embed_dim=32,
             num_heads=2)


def _vit(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm().create_model(name, **{**SMALL, **kwargs}).eval()


def _swin() -> nn.Module:
    torch.manual_seed(0)
    return timm().create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56,
                               window_size=7, depths=(1, 1), num_heads=(1, 2), embed_dim=16,
                               num_classes=5).eval()


def _tokens_to_grid(prefix: int, grid: tuple[int, int]):
    """pytorch-grad-cam's vit_reshape_transform, for `prefix` tokens before the grid."""
    def reshape(tensor):
        out = tensor[:, prefix:, :].reshape(tensor.size(0), *grid, tensor.size(2))
        return out.permute(0, 3, 1, 2)
    return reshape


def _nhwc_to_grid(tensor):
    """pytorch-grad-cam's swinT_reshape_transform for timm 1.0's (N, H, W, C) blocks."""
    return tensor.permute(0, 3, 1, 2)


CASES = {  # model, layer (module name), its module, reshape transform, input size
    "vit": (lambda: _vit("vit_tiny_patch16_224"), "blocks.1.norm1", _tokens_to_grid(1, (4, 4)),
            32),
    "deit_distilled": (lambda: _vit("deit_tiny_distilled_patch16_224"), "blocks.1.norm1",
                       _tokens_to_grid(2, (4, 4)), 32),
    "registers": (lambda: _vit("vit_tiny_patch16_224", reg_tokens=4), "blocks.1.norm1",
                  _tokens_to_grid(5, (4, 4)), 32),
    "swin": (_swin, "layers.1.blocks.0.norm1", _nhwc_to_grid, 56),
}
_EXPLAINERS: dict = {}


def _case(name: str):
    build, layer, reshape, size = CASES[name]
    if name not in _EXPLAINERS:
        model = build()
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
        _EXPLAINERS[name] = (model, x, onnx_cam.Explainer(model, example_input=x))
    return (*_EXPLAINERS[name], layer, reshape)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", ["gradcam", "gradcam++",
                                    pytest.param("scorecam", marks=pytest.mark.slow)])
def test_equals_pytorch_grad_cam_with_its_reshape_transform(case, method):
    pgc = pytorch_grad_cam()
    model, x, exp, layer, reshape = _case(case)
    assert layer in exp.layers
    cls = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus,
           "scorecam": pgc.ScoreCAM}[method]
    module = model.get_submodule(layer)
    targets = [pgc.utils.model_targets.ClassifierOutputTarget(t) for t in TARGETS]
    cam = cls(model, target_layers=[module], reshape_transform=reshape)
    ref_cam = cam(x, targets=targets)
    acts = cam.activations_and_grads.activations[0].numpy()
    grads = cam.activations_and_grads.gradients[0].numpy() if method != "scorecam" else None
    ref_raw = np.maximum(cam.get_cam_image(x, module, targets, acts, grads, False), 0)
    res = exp.explain(x.numpy(), targets=TARGETS, layers=layer, methods=method)
    raw = res.raw()
    assert raw.shape == ref_raw.shape and ref_raw.max() > 0
    np.testing.assert_allclose(raw, ref_raw, rtol=1e-4, atol=1e-4 * np.abs(ref_raw).max())
    assert res.cam().shape == (2, *x.shape[2:])
    # the maps differ only by pytorch-grad-cam scaling before it resizes (onnx-cam after)
    np.testing.assert_allclose(res.cam(), ref_cam, atol=0.05)


@pytest.mark.parametrize("case", ["vit", "deit_distilled"])
def test_ablationcam_equals_pytorch_grad_cam_ablation_layer_vit(case):
    """The head is fed the token tensor with a channel ablated at every token, prefix tokens
    included (AblationLayerVit). pytorch-grad-cam's batch_size=1: with more, its fill value
    sinks by 1e7 per row of a batch (it takes the minimum of the batch it ablates)."""
    pgc = pytorch_grad_cam()
    model, x, exp, layer, reshape = _case(case)
    module = model.get_submodule(layer)
    targets = [pgc.utils.model_targets.ClassifierOutputTarget(t) for t in TARGETS]
    cam = pgc.AblationCAM(model, target_layers=[module], reshape_transform=reshape,
                          ablation_layer=pgc.ablation_layer.AblationLayerVit(), batch_size=1)
    with torch.no_grad():
        cam.activations_and_grads(x)
    acts = cam.activations_and_grads.activations[0].numpy()
    ref_raw = np.maximum(cam.get_cam_image(x, module, targets, acts, None, False), 0)
    raw = exp.explain(x.numpy(), targets=TARGETS, layers=layer, methods="ablationcam").raw()
    assert raw.shape == ref_raw.shape and ref_raw.max() > 0
    np.testing.assert_allclose(raw, ref_raw, rtol=1e-4, atol=1e-4 * np.abs(ref_raw).max())


@pytest.mark.parametrize("case", ["vit", "deit_distilled"])
@pytest.mark.parametrize("gaussian", [False, True])
def test_reciprocam_keeps_the_prefix_tokens_as_a_direct_torch_loop(case, gaussian):
    """ViT-ReciproCAM (Byun & Lee, 2023, cls_token=True): the head is fed the layer's tokens
    with the prefix tokens kept and the grid tokens masked around one position; written here
    as a forward hook on the torch block."""
    from onnx_cam.methods import ReciproCAM

    model, x, exp, layer, _ = _case(case)
    prefix = {"vit": 1, "deit_distilled": 2}[case]
    side = 4
    weight = {0: 1.0, 1: 0.0} if not gaussian else {0: 0.5, 1: 0.25}
    masks = torch.zeros(side * side, prefix + side * side, 1)
    masks[:, :prefix] = 1
    for p in range(side * side):
        for q in range(side * side):
            distance = (abs(p // side - q // side), abs(p % side - q % side))
            if max(distance) <= 1:
                masks[p, prefix + q] = weight[distance[0]] * weight[distance[1]]
    hook = model.get_submodule(layer).register_forward_hook(lambda _m, _i, out: out * masks)
    try:
        with torch.no_grad():
            want = np.stack([model(x[i:i + 1].repeat(side * side, 1, 1, 1))[:, t].numpy()
                             for i, t in enumerate(TARGETS)]).reshape(len(x), side, side)
    finally:
        hook.remove()
    raw = exp.explain(x.numpy(), targets=TARGETS, layers=layer,
                      methods=ReciproCAM(gaussian=gaussian)).raw()
    np.testing.assert_allclose(raw, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_concept_scores_refused_on_tokens_with_a_prefix():
    _, x, exp, layer, _ = _case("vit")
    with pytest.raises(onnx_cam.errors.UnsupportedModelError, match="scores=False"):
        exp.factorize(x.numpy(), layer, components=2)
    assert exp.factorize(x.numpy(), layer, components=2, scores=False).scores is None


def test_grids_found_and_attention_internals_not_offered():
    _, _, exp, _, _ = _case("deit_distilled")
    infos = {layer.name: layer for layer in exp.layer_info}
    norm1 = infos["blocks.1.norm1"]
    assert norm1.tokens.prefix == 2 and norm1.tokens.grid == (4, 4)
    assert norm1.shape[1:] == (32, 4, 4)
    assert infos["patch_embed"].tokens.prefix == 0
    # (N, heads, T, T) and (N, heads, T, head_dim) tensors are no (N, C, H, W) layer
    assert not any("Softmax" in name or "attn/MatMul" in name for name in exp.layers)
    _, _, swin, _, _ = _case("swin")
    assert swin.layer_info[[la.name for la in swin.layer_info].index(
        "layers.1.blocks.0.norm1")].axes == (0, 2, 3, 1)


# ---- rollout ---------------------------------------------------------------------------
def _attention_probabilities(model, x, target=None):
    """Each block's attention probabilities (N, heads, T, T) from timm's unfused attention,
    and with a target, their gradients of the target's logit."""
    probs = []
    hooks = []
    for block in model.blocks:
        block.attn.fused_attn = False
        hooks.append(block.attn.attn_drop.register_forward_hook(
            lambda _m, _i, out: probs.append(out)))
    x = x.clone().requires_grad_(target is not None)
    logits = model(x)
    for attention in probs:
        attention.retain_grad()
    if target is not None:
        logits[torch.arange(len(x)), torch.as_tensor(target)].sum().backward()
    for hook in hooks:
        hook.remove()
    for block in model.blocks:
        block.attn.fused_attn = True
    return probs


def _torch_rollout(probs, prefix, discard_ratio, fusion):
    """jacobgil/vit-explain's rollout, written out per item."""
    tokens = probs[0].size(-1)
    maps = []
    for i in range(probs[0].size(0)):
        result = torch.eye(tokens, dtype=torch.float64)
        for attention in probs:
            a = attention[i].detach().double()
            fused = {"mean": a.mean(0), "max": a.max(0).values, "min": a.min(0).values}[fusion]
            flat = fused.reshape(-1).clone()
            _, idx = flat.topk(int(flat.numel() * discard_ratio), largest=False)
            flat[idx[idx != 0]] = 0
            a = (flat.reshape(tokens, tokens) + torch.eye(tokens, dtype=torch.float64)) / 2
            a = a / a.sum(dim=-1, keepdim=True)
            result = a @ result
        maps.append(result[0, prefix:])
    return torch.stack(maps)


def _torch_chefer(probs, prefix):
    """Chefer et al. 2021 (Generic Attention-model Explainability), eq. 5-6."""
    tokens = probs[0].size(-1)
    relevance = torch.eye(tokens, dtype=torch.float64).repeat(probs[0].size(0), 1, 1)
    for attention in probs:
        weighted = (attention.grad.double() * attention.detach().double()).clamp(min=0)
        relevance = relevance + weighted.mean(1) @ relevance
    return relevance[:, 0, prefix:]


def _upsampled_cam(grid_maps, size):
    up = torch.nn.functional.interpolate(grid_maps.float()[:, None], size=size,
                                         mode="bilinear", align_corners=False)[:, 0].numpy()
    flat = up.reshape(len(up), -1)
    low, high = flat.min(1), flat.max(1)
    assert (high > low).all()  # a constant map (onnx-cam: zeros) would test nothing
    return (up - low[:, None, None]) / (high - low)[:, None, None]


@pytest.mark.parametrize("case,prefix", [("vit", 1), ("deit_distilled", 2)])
@pytest.mark.parametrize("fusion,discard", [("mean", 0.5), ("max", 0.8), ("min", 0.0)])
def test_attention_rollout_equals_torch(case, prefix, fusion, discard):
    model, x, exp, _, _ = _case(case)
    probs = _attention_probabilities(model, x)
    ref = _torch_rollout(probs, prefix, discard, fusion).reshape(2, 4, 4)
    res = exp.explain(x.numpy(), methods=onnx_cam.methods.AttentionRollout(
        head_fusion=fusion, discard_ratio=discard))
    np.testing.assert_allclose(res.cam("attention_rollout"), _upsampled_cam(ref, (32, 32)),
                               atol=1e-4)


@pytest.mark.parametrize("case,prefix", [("vit", 1), ("registers", 5)])
def test_gradient_rollout_equals_torch(case, prefix):
    model, x, exp, _, _ = _case(case)
    probs = _attention_probabilities(model, x, TARGETS)
    ref = _torch_chefer(probs, prefix).reshape(2, 4, 4)
    res = exp.explain(x.numpy(), targets=TARGETS, methods="gradient_rollout")
    np.testing.assert_allclose(res.cam("gradient_rollout"), _upsampled_cam(ref, (32, 32)),
                               atol=1e-4)


class _ScaledViT(nn.Module):
    """A ViT with a second input: a per-item scale of each colour channel."""

    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, image, scale):
        return self.vit(image * scale[:, :, None, None])


def test_rollouts_feed_each_item_its_other_inputs():
    vit = _vit("vit_tiny_patch16_224")
    g = torch.Generator().manual_seed(3)
    x, scale = torch.randn(2, 3, 32, 32, generator=g), torch.rand(2, 3, generator=g) * 2
    exp = onnx_cam.Explainer(_ScaledViT(vit), example_input=(x, scale))
    inputs = {"image": x.numpy(), "scale": scale.numpy()}
    scaled = x * scale[:, :, None, None]
    res = exp.explain(inputs, targets=TARGETS, methods=["attention_rollout", "gradient_rollout"])
    plain = _torch_rollout(_attention_probabilities(vit, scaled), 1, 0.9, "mean")
    chefer = _torch_chefer(_attention_probabilities(vit, scaled, TARGETS), 1)
    for name, ref in (("attention_rollout", plain), ("gradient_rollout", chefer)):
        np.testing.assert_allclose(res.cam(name), _upsampled_cam(ref.reshape(2, 4, 4), (32, 32)),
                                   atol=1e-4)


def test_rollout_refuses_windowed_attention():
    _, x, exp, _, _ = _case("swin")
    with pytest.raises(onnx_cam.UnsupportedModelError, match="windowed attention"):
        exp.explain(x.numpy(), methods="attention_rollout")


def test_rollout_refuses_the_fused_attention_op():
    """opset 23's Attention op (torch.onnx's dynamo exporter writes it for
    scaled_dot_product_attention) holds the probabilities inside it."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((8, 3, 4, 4)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.standard_normal((8, 5)).astype(np.float32), "head"),
               numpy_helper.from_array(np.array([0, 8, 4], np.int64), "shape"),
               numpy_helper.from_array(np.array([1], np.int64), "token_axis")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["patches"], strides=[4, 4]),
             helper.make_node("Reshape", ["patches", "shape"], ["flat"]),
             helper.make_node("Transpose", ["flat"], ["tokens"], perm=[0, 2, 1]),
             helper.make_node("Attention", ["tokens", "tokens", "tokens"], ["mixed"],
                              q_num_heads=2, kv_num_heads=2),
             helper.make_node("ReduceMean", ["mixed", "token_axis"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "head"], ["logits"])]
    graph = helper.make_graph(
        nodes, "fused", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 5])], weights)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    exp = onnx_cam.Explainer(proto)
    with pytest.raises(onnx_cam.UnsupportedModelError, match="fused Attention op"):
        exp.explain(rng.standard_normal((2, 3, 8, 8)).astype(np.float32),
                    methods="attention_rollout")


# ---- 1D and 3D patch transformers -------------------------------------------------------
class PatchTransformer(nn.Module):
    """Conv patches of any dimensionality, a class token, one encoder block, a class head."""

    def __init__(self, dims: int, channels: int = 2, width: int = 16, patch: int = 4):
        super().__init__()
        conv = {1: nn.Conv1d, 3: nn.Conv3d}[dims]
        self.patch_embed = conv(channels, width, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width))
        self.block = nn.TransformerEncoderLayer(width, 2, 32, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        return self.head(self.norm(self.block(tokens))[:, 0])


@pytest.mark.parametrize("dims,spatial", [(1, (32,)), (3, (8, 8, 12))])
def test_1d_and_3d_patch_grids_equal_torch_autograd(dims, spatial):
    torch.manual_seed(2)
    model = PatchTransformer(dims).eval()
    x = torch.randn(2, 2, *spatial)
    grid = tuple(s // 4 for s in spatial)
    exp = onnx_cam.Explainer(export_bytes(model, x))
    seen = {}
    hook = model.block.register_forward_hook(lambda _m, _i, out: seen.update(out=out))
    logits = model(x)
    hook.remove()
    acts = seen["out"]
    (grads,) = torch.autograd.grad(logits[torch.arange(2), torch.tensor([0, 2])].sum(), acts)

    def grid_view(t):
        return t[:, 1:].detach().double().transpose(1, 2).reshape(2, -1, *grid)

    a, g = grid_view(acts), grid_view(grads)
    weights = g.mean(dim=tuple(range(2, 2 + dims)), keepdim=True)
    ref = torch.relu((weights * a).sum(1)).numpy()
    layer = next(la for la in exp.layer_info if "block/norm2" in la.name)
    assert layer.tokens.prefix == 1 and layer.tokens.grid == grid
    res = exp.explain(x.numpy(), targets=[0, 2], layers=layer.name, methods="gradcam")
    np.testing.assert_allclose(res.raw(), ref, rtol=1e-4, atol=1e-4 * ref.max())
    assert res.cam().shape == (2, *spatial)


def test_grid_override_when_the_search_fails():
    """A token layer whose grid the graph does not show (tokens from a Gather) is offered
    only with grid= / prefix_tokens=, and a grid that matches no tensor says so."""
    class Gathered(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embed = nn.Conv2d(3, 8, 4, stride=4)
            self.mix = nn.Linear(8, 8)
            self.head = nn.Linear(8, 5)
            self.register_buffer("order", torch.arange(16))

        def forward(self, x):
            tokens = self.patch_embed(x).flatten(2).transpose(1, 2)[:, self.order]
            return self.head(self.mix(tokens).mean(1))

    torch.manual_seed(3)
    model, x = Gathered().eval(), torch.randn(2, 3, 16, 16)
    onnx_bytes = export_bytes(model, x)
    plain = onnx_cam.Explainer(onnx_bytes)
    assert not any(la.tokens is not None and la.tokens.prefix == 0 and la.op == "MatMul"
                   for la in plain.layer_info)
    mixed = "/mix/MatMul_output_0"
    with pytest.raises(onnx_cam.LayerError, match="search for its patch grid failed"):
        plain.explain(x.numpy(), layers=mixed)
    exp = onnx_cam.Explainer(onnx_bytes, grid=(4, 4), prefix_tokens=0)
    assert exp.explain(x.numpy(), layers=mixed).cam().shape == (2, 16, 16)
    layer = next(la for la in exp.layer_info if la.op in ("Add", "MatMul") and la.tokens)
    assert layer.shape[1:] == (8, 4, 4)
    with pytest.raises(onnx_cam.LayerError, match="matches no tensor"):
        onnx_cam.Explainer(onnx_bytes, grid=(5, 5), prefix_tokens=1)
    with pytest.raises(onnx_cam.LayerError, match="needs grid="):
        onnx_cam.Explainer(onnx_bytes, prefix_tokens=1)


@pytest.mark.slow
def test_rollout_on_a_dynamo_export_with_fused_attention():
    """torch.onnx's dynamo exporter at opset 18 writes timm's scaled_dot_product_attention
    as MatMul / Softmax: the probabilities are found there too."""
    model, x, _, _, _ = _case("vit")
    program = torch.onnx.export(model, (x,), dynamo=True, opset_version=18,
                                dynamic_shapes=({0: torch.export.Dim("batch")},))
    exp = onnx_cam.Explainer(program.model_proto)
    probs = _attention_probabilities(model, x, TARGETS)
    ref = _torch_chefer(probs, 1).reshape(2, 4, 4)
    res = exp.explain(x.numpy(), targets=TARGETS, methods="gradient_rollout")
    np.testing.assert_allclose(res.cam(), _upsampled_cam(ref, (32, 32)), atol=1e-4)


def test_slice_and_pad_with_run_time_parameters_equal_torch_autograd():
    """Swin pads its windows and crops them back by sizes computed from shapes at run time:
    the Slice / Pad gradients with run-time parameters (negative pads: crops) against torch."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    head = rng.standard_normal((4, 3)).astype(np.float32)
    pads, ends = np.array([0, 0, 2, -1, 0, 0, -2, 3], np.int64), np.array([5, 7], np.int64)

    def at_run_time(name, values):
        # values + int(0 * min(x)): no shape inference or constant folding sees through it
        return [helper.make_node("Mul", ["x", "zero"], [f"{name}_zeros"]),
                helper.make_node("ReduceMin", [f"{name}_zeros"], [f"{name}_zero"], keepdims=0),
                helper.make_node("Cast", [f"{name}_zero"], [f"{name}_int"], to=7),
                helper.make_node("Add", [f"{name}_const", f"{name}_int"], [name])], \
            numpy_helper.from_array(values, f"{name}_const")

    pad_nodes, pad_const = at_run_time("pads", pads)
    end_nodes, end_const = at_run_time("ends", ends)
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
             *pad_nodes, helper.make_node("Pad", ["conv", "pads"], ["padded"]),
             *end_nodes, helper.make_node("Slice", ["padded", "starts", "ends", "axes"],
                                          ["cropped"]),
             helper.make_node("Relu", ["cropped"], ["relu"]),
             helper.make_node("ReduceMean", ["relu"], ["pooled"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["pooled", "head"], ["logits"])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(head, "head"), pad_const,
             end_const, numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
             numpy_helper.from_array(np.array([1, 0], np.int64), "starts"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    graph = helper.make_graph(
        nodes, "runtime_pads",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((2, 2, 8, 8)).astype(np.float32)
    res = onnx_cam.Explainer(proto).explain(x, targets=[0, 2], layers="conv",
                                            methods="hirescam")

    conv = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1)
    conv.requires_grad_(True)
    padded = torch.nn.functional.pad(conv, (-1, 3, 2, -2))  # (w begin, w end, h begin, h end)
    cropped = padded[:, :, 1:5, :7]
    logits = torch.relu(cropped).mean((2, 3)) @ torch.from_numpy(head)
    logits[[0, 1], [0, 2]].sum().backward()
    ref = torch.relu((conv.grad * conv).sum(1)).detach().numpy()
    assert ref.max() > 0
    np.testing.assert_allclose(res.raw(), ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("case", ["vit", "deit_distilled"])
def test_input_gradients_through_the_expanded_class_token_equal_captum(case):
    """The class (and distillation) token is Expand'ed to Shape(x)[0] and concatenated before
    the patch tokens: the token count must be static for the Concat's gradient (input
    attributions against Captum, Grad-CAM at patch_embed against pytorch-grad-cam)."""
    captum_attr = pytest.importorskip("captum.attr", reason="Captum is the reference: pip "
                                      "install --no-deps captum==0.9.0")
    from onnx_cam.methods import IntegratedGradients, Saliency

    model, x, exp, _, _ = _case(case)
    res = exp.explain(x.numpy(), targets=TARGETS,
                      methods=[Saliency(absolute=False), IntegratedGradients(n_steps=7)])
    refs = {"saliency": captum_attr.Saliency(model).attribute(x.clone(), target=TARGETS,
                                                                abs=False),
            "integrated_gradients": captum_attr.IntegratedGradients(model).attribute(
                x.clone(), target=TARGETS, n_steps=7)}
    for name, ref in refs.items():
        ref = ref.detach().numpy()
        np.testing.assert_allclose(res.attribution(name), ref, rtol=1e-4,
                                   atol=1e-4 * np.abs(ref).max(), err_msg=name)
    pgc = pytorch_grad_cam()
    cam = pgc.GradCAM(model, target_layers=[model.patch_embed],
                      reshape_transform=_tokens_to_grid(0, (4, 4)))
    cam(x, targets=[pgc.utils.model_targets.ClassifierOutputTarget(t) for t in TARGETS])
    acts, grads = (a[0].numpy() for a in (cam.activations_and_grads.activations,
                                          cam.activations_and_grads.gradients))
    ref_raw = np.maximum(cam.get_cam_image(x, model.patch_embed, None, acts, grads, False), 0)
    raw = exp.explain(x.numpy(), targets=TARGETS, layers="patch_embed").raw()
    np.testing.assert_allclose(raw, ref_raw, rtol=1e-4, atol=1e-4 * np.abs(ref_raw).max())
