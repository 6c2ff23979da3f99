"""Token-id models (embedding -> conv -> head): CAMs over token positions, padding masked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import onnx_cam
from onnx_cam import InputError, MethodError

VOCAB, LENGTH, PAD = 20, 24, 0


class TextCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8, padding_idx=PAD)
        self.conv1 = nn.Conv1d(8, 12, 3, padding=1)
        self.conv2 = nn.Conv1d(12, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 3)

    def forward(self, ids):
        h = self.embed(ids).transpose(1, 2)
        h = F.relu(self.conv2(F.relu(self.conv1(h))))
        return self.fc(h.mean(dim=2))


@pytest.fixture(scope="module")
def text_model():
    torch.manual_seed(0)
    net = TextCNN().eval()
    ids = torch.randint(1, VOCAB, (6, LENGTH))
    return net, ids, onnx_cam.Explainer(net, example_input=ids)


def torch_gradcam(net, ids, target):
    """Grad-CAM at conv2 by autograd, linearly upsampled (half-pixel) to the tokens."""
    acts = {}
    handle = net.conv2.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    logits = net(ids)
    handle.remove()
    a = acts["a"]
    (g,) = torch.autograd.grad(logits[torch.arange(len(ids)), target].sum(), a)
    raw = F.relu((g.mean(2, keepdim=True) * a).sum(1, keepdim=True))
    return F.interpolate(raw, size=ids.shape[1], mode="linear",
                         align_corners=False)[:, 0].detach().numpy()


def test_token_models_are_explained_over_token_positions(text_model):
    net, ids, exp = text_model
    assert exp.model.tokens and "conv2" in exp.layers
    res = exp.explain(ids.numpy(), targets=1, layers="conv2")
    up = torch_gradcam(net, ids, torch.full((len(ids),), 1))
    lo, hi = up.min(1, keepdims=True), up.max(1, keepdims=True)
    np.testing.assert_allclose(res.cam(), (up - lo) / (hi - lo), atol=1e-4)
    np.testing.assert_allclose(res.score_range()[:, 1], hi[:, 0], rtol=1e-4)


def test_padding_is_left_out_of_the_maps(text_model):
    net, ids, exp = text_model
    seqs = [ids[0, :10].numpy(), ids[1, :17].numpy(), ids[2].numpy()]
    padded = np.zeros((3, LENGTH), np.int64)
    for row, seq in zip(padded, seqs):
        row[:len(seq)] = seq
    padded = torch.from_numpy(padded)
    maps = np.stack([torch_gradcam(net, padded, torch.full((3,), k)) for k in range(3)])
    targets = [int(np.argmax([np.ptp(m[r, :len(seq)]) for m in maps]))  # a non-constant map
               for r, seq in enumerate(seqs)]
    res = exp.explain(seqs, targets=[[t] for t in targets], layers="conv2", pad_id=PAD)
    for r, seq in enumerate(seqs):
        real = maps[targets[r], r, :len(seq)]
        assert real.max() > real.min()
        expected = (real - real.min()) / (real.max() - real.min())
        np.testing.assert_allclose(res.cam()[r, :len(seq)], expected, atol=1e-4)
        assert (res.cam()[r, len(seq):] == 0).all()
        np.testing.assert_allclose(res.score_range()[r], [real.min(), real.max()], rtol=1e-4,
                                   atol=1e-7)


def test_token_input_errors_say_what_to_do(text_model):
    _, ids, exp = text_model
    with pytest.raises(InputError, match="pad_id="):
        exp.explain([ids[0, :5].numpy(), ids[1].numpy()])
    with pytest.raises(InputError, match="integer token ids"):
        exp.explain(ids.numpy() + 0.5)
    with pytest.raises(MethodError, match="gradient method"):
        exp.explain(ids.numpy(), methods="scorecam")
    assert exp.explain(ids.numpy(), methods="ablationcam").cam().shape == (6, LENGTH)


def test_token_datasets_audit_over_positions(text_model, tmp_path):
    from onnx_cam.audit import run
    net, ids, exp = text_model
    np.save(tmp_path / "ids.npy", ids.numpy())
    exp.save_model(tmp_path / "text.onnx")
    store = run(tmp_path / "text.onnx", tmp_path / "ids.npy", tmp_path / "s.zarr",
                layers="conv2", progress=False)
    assert store.cams("gradcam", "conv2").shape == (len(ids), LENGTH)
    np.testing.assert_allclose(store.cams("gradcam", "conv2")[:],
                               exp.explain(ids.numpy(), layers="conv2").cam(), atol=1e-3)


def test_top_k_targets_are_planned_on_token_ids(text_model):
    net, ids, exp = text_model
    res = exp.explain(ids.numpy(), targets="top2", layers="conv2")
    expected = net(ids).topk(2, dim=1).indices.numpy()
    np.testing.assert_array_equal(res.targets.reshape(-1, 2), expected)
