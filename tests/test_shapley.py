"""ShapleyCAM: the Hessian-vector product from differentiating the gradient subgraph, against
torch's double backward (1D / 2D / 3D, ReLU and smooth heads) and pytorch-grad-cam's
ShapleyCAM with its ReST target on 2D."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import export_bytes
from references import pytorch_grad_cam
from torch import nn

import onnx_cam

TARGETS = [1, 0, 2]
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
SHAPES = {1: (3, 2, 24), 2: (3, 2, 12, 10), 3: (3, 2, 6, 8, 6)}


def model_for(dims: int, smooth: bool) -> nn.Sequential:
    torch.manual_seed(dims)
    head = [CONV[dims](6, 5, 3, stride=2, padding=1), nn.GELU() if smooth else nn.ReLU()]
    return nn.Sequential(CONV[dims](2, 6, 3, padding=1), nn.ReLU(), *head, POOL[dims](1),
                         nn.Flatten(), nn.Linear(5, 3), nn.Tanh() if smooth else nn.Identity(),
                         nn.Linear(3, 3)).eval()


def rest(logits: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's ClassifierOutputReST: z_t - cross_entropy(z, t)."""
    t = torch.tensor(TARGETS)
    return logits[torch.arange(len(t)), t] - F.cross_entropy(logits, t, reduction="none")


def torch_shapley(model, x, score):
    acts = model[:2](x).detach().double().requires_grad_(True)
    head = model[2:].double()
    (g,) = torch.autograd.grad(score(head(acts)).sum(), acts, create_graph=True)
    (hvp,) = torch.autograd.grad(g, acts, grad_outputs=acts.detach())
    model.float()
    weights = (g - 0.5 * hvp).detach().mean(dim=tuple(range(2, acts.ndim)))
    w = weights.reshape(weights.shape + (1,) * (acts.ndim - 2))
    return F.relu((w * acts.detach()).sum(1)).numpy(), hvp.numpy()


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("smooth", [False, True], ids=["relu", "gelu-tanh"])
@pytest.mark.parametrize("score", ["rest", "log_probs", "logits"])
def test_hessian_vector_product_matches_double_backward(dims, smooth, score):
    model = model_for(dims, smooth)
    x = 5 * torch.randn(*SHAPES[dims])  # large activations: H A weighs 2-20 % of the weights
    scores = {"rest": rest,
              "log_probs": lambda z: F.log_softmax(z, 1)[torch.arange(3), TARGETS],
              "logits": lambda z: z[torch.arange(3), TARGETS]}
    ref, hvp = torch_shapley(model, x, scores[score])
    res = onnx_cam.Explainer(export_bytes(model, x)).explain(
        x.numpy(), targets=TARGETS, layers="/1/Relu_output_0", methods="shapleycam",
        score=score)
    np.testing.assert_allclose(res.raw(), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    assert (np.abs(hvp).max() > 1e-9) == (score != "logits" or smooth)  # H = 0: ReLU, logits


def test_equals_pytorch_grad_cams_shapley_cam():
    pgc = pytorch_grad_cam()
    model = model_for(2, smooth=False)
    x = 5 * torch.randn(*SHAPES[2])
    targets = [pgc.utils.model_targets.ClassifierOutputReST(t) for t in TARGETS]
    ref = pgc.ShapleyCAM(model, target_layers=[model[1]])(x, targets=targets)
    res = onnx_cam.Explainer(export_bytes(model, x)).explain(
        x.numpy(), targets=TARGETS, layers="/1/Relu_output_0", methods="shapleycam",
        score="rest")
    np.testing.assert_allclose(res.cam(), ref, atol=1e-3)
