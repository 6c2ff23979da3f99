"""Gradients through LSTM and GRU nodes, against torch autograd.

Torch models (Conv1d -> ReLU -> LSTM / GRU -> readout -> Linear) check what the torch exporter
produces; hand-built ONNX graphs cover what it never emits (reverse direction, layout=1,
sequence_lens, GRU linear_before_reset=0, an absent Y output), checked against a torch
re-implementation of the ONNX operator semantics.
"""

from __future__ import annotations

import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import onnx_cam
from onnx_cam.errors import UnsupportedModelError
from onnx_cam.graph.cam_model import build_cam_model
from onnx_cam.model import Model

# the torch exporter's tracing warnings about LSTM / GRU modules
pytestmark = [pytest.mark.filterwarnings("ignore:Exporting a model to ONNX with a batch_size"),
              pytest.mark.filterwarnings("ignore:Converting a tensor to a Python boolean")]


def _gradcam(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    weights = grads.mean(2, keepdims=True)
    return np.maximum((weights * acts).sum(1), 0)


# ---- torch models ---------------------------------------------------------------------------
class Recurrent(nn.Module):
    """Conv1d -> ReLU -> (T, N, C) or batch-first -> LSTM / GRU -> readout -> Linear."""

    def __init__(self, cell, *, layers=1, bidirectional=False, batch_first=False,
                 readout="last", given_h0=False, softmax=False, channels=6, hidden=5):
        super().__init__()
        self.conv = nn.Conv1d(2, channels, 3, padding=1)
        self.relu = nn.ReLU()
        self.rnn = cell(channels, hidden, num_layers=layers, batch_first=batch_first,
                        bidirectional=bidirectional)
        self.dirs = 2 if bidirectional else 1
        self.shape = (layers * self.dirs, hidden)
        self.init = nn.Linear(channels, layers * self.dirs * hidden) if given_h0 else None
        self.lstm = cell is nn.LSTM
        self.fc = nn.Linear(hidden * self.dirs, 3)
        self.head = nn.Softmax(dim=1) if softmax else nn.Identity()
        self.batch_first, self.readout = batch_first, readout

    def forward(self, x):
        a = self.relu(self.conv(x))
        seq = a.permute(0, 2, 1) if self.batch_first else a.permute(2, 0, 1)
        state = None
        if self.init is not None:  # h0 (and c0) computed from the features: differentiable
            h0 = torch.tanh(self.init(a.mean(2))).reshape(-1, *self.shape).transpose(0, 1)
            state = (h0, 0.5 * h0) if self.lstm else h0
        y, h_n = self.rnn(seq, state)
        time_axis = 1 if self.batch_first else 0
        if self.readout == "mean":
            feat = y.mean(time_axis)
        elif self.readout == "last":
            feat = (y[:, -1:] if self.batch_first else y[-1:].transpose(0, 1)).flatten(1)
        else:  # the final states of the top layer (h_n + c_n for an LSTM)
            finals = list(h_n) if self.lstm else [h_n]
            feat = sum(s[-self.dirs:].transpose(0, 1).flatten(1) for s in finals)
        return self.head(self.fc(feat))


def _torch_reference(model, x, targets):
    acts = {}

    def keep(module, inputs, output):
        output.retain_grad()
        acts["a"] = output

    hook, head = model.relu.register_forward_hook(keep), model.head
    model.head = nn.Identity()  # the explained score is the logits
    try:
        logits = model(x)
    finally:
        hook.remove()
        model.head = head
    logits[torch.arange(len(x)), torch.as_tensor(targets)].sum().backward()
    return logits.detach().numpy(), acts["a"].detach().numpy(), acts["a"].grad.numpy()


TORCH_CASES = [
    (nn.LSTM, dict(readout="last", softmax=True)),
    (nn.LSTM, dict(layers=2, bidirectional=True, batch_first=True, readout="mean")),
    (nn.LSTM, dict(bidirectional=True, readout="h_n", given_h0=True)),
    (nn.LSTM, dict(layers=2, readout="h_n", batch_first=True)),
    (nn.GRU, dict(batch_first=True, readout="h_n")),
    (nn.GRU, dict(layers=2, bidirectional=True, readout="last", softmax=True)),
    (nn.GRU, dict(bidirectional=True, batch_first=True, readout="mean", given_h0=True)),
]


@pytest.mark.parametrize("cell, kwargs", TORCH_CASES,
                         ids=[f"{c.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items())}"
                              for c, kw in TORCH_CASES])
def test_torch_recurrent_models_match_autograd(cell, kwargs):
    torch.manual_seed(3)
    model = Recurrent(cell, **kwargs).eval()
    x = torch.randn(4, 2, 23)
    targets = [0, 2, 1, 2]
    exp = onnx_cam.Explainer(model, example_input=x)
    logits, per_layer = exp.activations_and_gradients(x.numpy(), targets=targets,
                                                      layers=["relu"])
    acts, grads = per_layer["relu"]
    ref_logits, ref_acts, ref_grads = _torch_reference(model, x, targets)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(acts, ref_acts, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads, ref_grads, rtol=1e-4,
                               atol=1e-4 * np.abs(ref_grads).max())
    cam = exp.explain(x.numpy(), targets=targets, layers="relu").raw("gradcam")
    ref_cam = _gradcam(ref_acts, ref_grads)
    np.testing.assert_allclose(cam, ref_cam, rtol=1e-4, atol=1e-4 * np.abs(ref_cam).max())


# ---- hand-built ONNX graphs -----------------------------------------------------------------
def _rnn_reference(op, x, w, r, bias, h0, c0, lens, direction, lbr, peep=None):
    """The ONNX LSTM / GRU operator (layout 0) in torch: Y (T, D, N, H), Y_h, Y_c."""
    steps, batch = x.shape[:2]
    hidden = r.shape[-1]
    valid = torch.arange(steps)[:, None] < lens[None, :]
    ys, hs, cs = [], [], []
    for d in range(w.shape[0]):
        reverse = direction == "reverse" or d == 1
        h = h0[d] if h0 is not None else torch.zeros(batch, hidden)
        c = c0[d] if c0 is not None else torch.zeros(batch, hidden)
        wb, rb = bias[d].chunk(2)
        y = [None] * steps
        for t in (reversed(range(steps)) if reverse else range(steps)):
            gx, gh = x[t] @ w[d].T + wb, h @ r[d].T + rb
            if op == "LSTM":
                i, o, f, g = (gx + gh).chunk(4, -1)
                if peep is not None:  # P = (p_i, p_o, p_f); o reads the new cell state
                    p_i, p_o, p_f = peep[d].chunk(3)
                    i, f = i + p_i * c, f + p_f * c
                c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                if peep is not None:
                    o = o + p_o * c_new
                h_new = torch.sigmoid(o) * torch.tanh(c_new)
            else:
                (xz, xr, xn), (hz, hr, hn) = gx.chunk(3, -1), gh.chunk(3, -1)
                z, rr = torch.sigmoid(xz + hz), torch.sigmoid(xr + hr)
                if lbr:
                    n = torch.tanh(xn + rr * hn)
                else:
                    n = torch.tanh(xn + (rr * h) @ r[d][2 * hidden:].T + rb[2 * hidden:])
                h_new = (1 - z) * n + z * h
                c_new = c
            m = valid[t][:, None]
            y[t] = torch.where(m, h_new, torch.zeros(()))
            h, c = torch.where(m, h_new, h), torch.where(m, c_new, c)
        ys.append(torch.stack(y))
        hs.append(h)
        cs.append(c)
    return torch.stack(ys, 1), torch.stack(hs), torch.stack(cs)


def _build_onnx(op, *, direction="forward", layout=0, seq="none", outputs="all",
                given_h0=False, lbr=1, peep=False, steps=21, batch=4, hidden=5, attrs=None,
                seed=0):
    """input (N, 2, T) -> Conv -> Relu -> RNN -> [mean Y, Y_h, Y_c] -> Gemm; and its weights."""
    rng = np.random.default_rng(seed)
    dirs, gates, chans = (2 if direction == "bidirectional" else 1), (4 if op == "LSTM" else 3), 6
    p = {
        "cw": rng.normal(0, 0.5, (chans, 2, 3)), "cb": rng.normal(0, 0.1, chans),
        "W": rng.normal(0, 0.4, (dirs, gates * hidden, chans)),
        "R": rng.normal(0, 0.4, (dirs, gates * hidden, hidden)),
        "B": rng.normal(0, 0.2, (dirs, 2 * gates * hidden)),
        "iw": rng.normal(0, 0.5, (dirs * hidden, chans)), "ib": rng.normal(0, 0.1, dirs * hidden),
    }
    if peep:
        p["P"] = rng.normal(0, 0.5, (dirs, 3 * hidden))
    lens = np.full(batch, steps, np.int32)
    if seq == "varied":
        lens = np.array([steps, steps - 4, 3, steps - 9][:batch], np.int32)
    n_feat = dirs * hidden * ((op == "LSTM") + 2 if outputs == "all" else 1)
    p["fw"], p["fb"] = rng.normal(0, 0.5, (3, n_feat)), rng.normal(0, 0.1, 3)
    p = {k: v.astype(np.float32) for k, v in p.items()}
    inits = [numpy_helper.from_array(v, k) for k, v in p.items()]
    consts = {"shape_ndh": np.array([0, dirs, hidden], np.int64), "half": np.float32(0.5),
              "steps": np.array([steps], np.int32), "lens": lens}
    inits += [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
    nodes = [helper.make_node("Conv", ["input", "cw", "cb"], ["conv"], pads=[1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("Transpose", ["relu"], ["seq"],
                              perm=[0, 2, 1] if layout else [2, 0, 1])]
    rnn_in = ["seq", "W", "R", "B", "", "", ""]
    if seq in ("full", "varied"):
        rnn_in[4] = "lens"
    elif seq == "runtime":  # all full, but computed at run time from the input's shape
        nodes += [helper.make_node("Shape", ["input"], ["in_shape"], start=0, end=1),
                  helper.make_node("Expand", ["steps", "in_shape"], ["lens_rt"])]
        rnn_in[4] = "lens_rt"
    if given_h0:
        nodes += [helper.make_node("ReduceMean", ["relu"], ["pooled"], axes=[2], keepdims=0),
                  helper.make_node("Gemm", ["pooled", "iw", "ib"], ["h0_flat"], transB=1),
                  helper.make_node("Reshape", ["h0_flat", "shape_ndh"], ["h0_ndh"]),
                  helper.make_node("Tanh", ["h0_ndh"], ["h0_tanh"])]
        if layout:
            nodes.append(helper.make_node("Identity", ["h0_tanh"], ["h0"]))
        else:
            nodes.append(helper.make_node("Transpose", ["h0_tanh"], ["h0"], perm=[1, 0, 2]))
        nodes.append(helper.make_node("Mul", ["h0", "half"], ["c0"]))
        rnn_in[5] = "h0"
        rnn_in[6] = "c0" if op == "LSTM" else ""
    if op == "GRU":
        rnn_in = rnn_in[:6]
    elif peep:
        rnn_in.append("P")
    while rnn_in and rnn_in[-1] == "":
        rnn_in.pop()
    rnn_out = ["Y" if outputs == "all" else "", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    extra = {"linear_before_reset": lbr} if op == "GRU" else {}
    nodes.append(helper.make_node(op, rnn_in, rnn_out, direction=direction, hidden_size=hidden,
                                  layout=layout, **extra, **(attrs or {})))
    feats = []
    finals = ["Y_h", "Y_c"] if op == "LSTM" and outputs == "all" else ["Y_h"]
    if outputs == "all":
        nodes.append(helper.make_node("ReduceMean", ["Y"], ["y_mean"], axes=[1 if layout else 0],
                                      keepdims=0))
        finals = ["y_mean"] + finals
    for name in finals:
        src = name
        if not layout:  # (D, N, H) -> (N, D, H)
            nodes.append(helper.make_node("Transpose", [name], [f"{name}_ndh"], perm=[1, 0, 2]))
            src = f"{name}_ndh"
        nodes.append(helper.make_node("Flatten", [src], [f"{name}_flat"], axis=1))
        feats.append(f"{name}_flat")
    nodes += [helper.make_node("Concat", feats, ["feat"], axis=1),
              helper.make_node("Gemm", ["feat", "fw", "fb"], ["output"], transB=1)]
    graph = helper.make_graph(
        nodes, "rnn", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                     ["N", 2, steps])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, {k: torch.from_numpy(v) for k, v in p.items()}, torch.from_numpy(lens)


def _onnx_reference(op, p, lens, x, targets, *, direction, layout, outputs, given_h0, lbr,
                    peep=False):
    """The hand-built graph's logits and d logit / d relu, by torch autograd."""
    relu = torch.relu(nn.functional.conv1d(x, p["cw"], p["cb"], padding=1))
    relu = relu.detach().requires_grad_(True)
    seq = relu.permute(2, 0, 1)  # the reference runs in layout 0; layout only moves axes
    h0 = c0 = None
    if given_h0:
        flat = torch.tanh(relu.mean(2) @ p["iw"].T + p["ib"])
        h0 = flat.reshape(len(x), -1, p["R"].shape[-1]).transpose(0, 1)
        c0 = 0.5 * h0 if op == "LSTM" else None
    y, y_h, y_c = _rnn_reference(op, seq, p["W"], p["R"], p["B"], h0, c0, lens, direction, lbr,
                                 p.get("P"))
    finals = [y_h, y_c] if op == "LSTM" and outputs == "all" else [y_h]
    if outputs == "all":
        finals = [y.mean(0)] + finals
    feat = torch.cat([f.transpose(0, 1).flatten(1) for f in finals], 1)
    logits = feat @ p["fw"].T + p["fb"]
    logits[torch.arange(len(x)), torch.as_tensor(targets)].sum().backward()
    return logits.detach().numpy(), relu.grad.numpy()


def _layout0_emulation(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Replace each layout=1 LSTM / GRU node by Transposes around a layout=0 node.

    onnxruntime's CPU kernels refuse layout=1; the gradient nodes built for the layout=1 node
    are left as they are, so they are still what is checked.
    """
    nodes = []
    for node in proto.graph.node:
        layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
        if node.op_type not in ("LSTM", "GRU") or not layout:
            nodes.append(node)
            continue
        ins, outs, after = list(node.input), list(node.output), []
        for k in (0, 5, 6):  # X (N, T, I), initial_h / initial_c (N, D, H)
            if k < len(ins) and ins[k]:
                nodes.append(helper.make_node("Transpose", [ins[k]], [ins[k] + "/l0"],
                                              perm=[1, 0, 2]))
                ins[k] += "/l0"
        for k, name in enumerate(outs):
            if name:  # Y (T, D, N, H) -> (N, T, D, H); Y_h, Y_c (D, N, H) -> (N, D, H)
                perm = [2, 0, 1, 3] if k == 0 else [1, 0, 2]
                after.append(helper.make_node("Transpose", [name + "/l0"], [name], perm=perm))
                outs[k] = name + "/l0"
        attrs = [a for a in node.attribute if a.name != "layout"]
        replaced = helper.make_node(node.op_type, ins, outs, node.name)
        replaced.attribute.extend(attrs)
        nodes += [replaced] + after
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto


def _run_cam(proto: onnx.ModelProto, x: np.ndarray, targets) -> tuple[np.ndarray, np.ndarray]:
    """Logits and d logit[target] / d relu from the rewritten model, run directly."""
    model = Model(proto)
    cam = build_cam_model(model, ["relu"], x.shape[2:])
    session = ort.InferenceSession(_layout0_emulation(cam.proto).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    seed = np.eye(model.num_classes, dtype=np.float32)[targets]
    logits, grads = session.run([cam.score_name, cam.gradient_names[0]],
                                {cam.input_name: x, cam.seed_name: seed})
    return logits, grads


ONNX_CASES = [
    ("LSTM", dict(direction="reverse", layout=1, given_h0=True)),
    ("LSTM", dict(direction="forward", seq="varied", given_h0=True)),
    ("LSTM", dict(direction="bidirectional", layout=1, seq="varied", outputs="h")),
    ("LSTM", dict(direction="bidirectional", seq="runtime")),
    ("LSTM", dict(direction="reverse", seq="full", outputs="h")),
    ("LSTM", dict(direction="bidirectional", peep=True, seq="varied", given_h0=True)),
    ("LSTM", dict(direction="reverse", layout=1, peep=True, outputs="h")),
    ("GRU", dict(direction="reverse", lbr=0, seq="varied", given_h0=True)),
    ("GRU", dict(direction="bidirectional", layout=1, seq="full", outputs="h")),
    ("GRU", dict(direction="forward", layout=1, lbr=0)),
    ("GRU", dict(direction="bidirectional", layout=1, lbr=0, seq="varied", given_h0=True)),
]


@pytest.mark.parametrize("op, kwargs", ONNX_CASES,
                         ids=[f"{o}-{'-'.join(f'{k}={v}' for k, v in kw.items())}"
                              for o, kw in ONNX_CASES])
def test_onnx_recurrent_nodes_match_autograd(op, kwargs):
    options = dict(direction="forward", layout=0, outputs="all", given_h0=False, lbr=1) | kwargs
    proto, params, lens = _build_onnx(op, **options)
    onnx.checker.check_model(proto)
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(4, 2, 21)).astype(np.float32))
    targets = [1, 0, 2, 1]
    logits, grads = _run_cam(proto, x.numpy(), targets)
    options.pop("seq", None)
    ref_logits, ref_grads = _onnx_reference(op, params, lens, x, targets, **options)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-5)  # same semantics
    np.testing.assert_allclose(grads, ref_grads, rtol=1e-4,
                               atol=1e-4 * np.abs(ref_grads).max())


@pytest.mark.parametrize("op, attrs, message", [
    ("LSTM", dict(clip=3.0), "clip"),
    ("LSTM", dict(input_forget=1), "input_forget"),
    ("LSTM", dict(activations=["Sigmoid", "Relu", "Tanh"]), "activations"),
    ("GRU", dict(activations=["HardSigmoid", "Tanh"]), "activations"),
])
def test_unsupported_cells_are_refused(op, attrs, message):
    proto, _, _ = _build_onnx(op, attrs=attrs, steps=8)
    exp = onnx_cam.Explainer(proto.SerializeToString())
    x = np.zeros((2, 2, 8), np.float32)
    with pytest.raises(UnsupportedModelError, match=message):
        exp.activations_and_gradients(x, targets=[0, 1], layers=["relu"])


# ---- long sequences -------------------------------------------------------------------------
def test_long_sequence_builds_a_graph_of_constant_size_and_runs():
    torch.manual_seed(5)
    model = Recurrent(nn.LSTM, bidirectional=True, readout="mean", channels=16,
                      hidden=32).eval()
    short, long_ = torch.randn(2, 2, 20), torch.randn(8, 2, 500)
    sizes = []
    for x in (short, long_):
        exp = onnx_cam.Explainer(model, example_input=x[:2])
        tensor = exp.model.resolve_layer("relu").tensor
        cam_model = build_cam_model(exp.model, [tensor], tuple(x.shape[2:]))
        sizes.append(len(cam_model.proto.graph.node))
    assert sizes[0] == sizes[1]  # Scan loops: the graph does not grow with T
    start = time.perf_counter()
    _, per_layer = exp.activations_and_gradients(long_.numpy(), targets=[1] * 8,
                                                 layers=["relu"])
    assert time.perf_counter() - start < 30
    grads = per_layer["relu"][1]
    assert grads.shape == (8, 16, 500) and np.isfinite(grads).all()
    _, _, ref = _torch_reference(model, long_[:2], [1, 1])  # spot check two items
    np.testing.assert_allclose(grads[:2], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_2d_cnn_gru_on_a_spectrogram():
    """Conv2d over (freq, time), frequency folded into channels, a GRU over time."""

    class SpectroGRU(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.relu = nn.ReLU()
            self.gru = nn.GRU(4 * 8, 6, batch_first=True)
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            h = self.relu(self.conv(x))                       # (N, 4, F=8, T)
            seq = h.flatten(1, 2).transpose(1, 2)             # (N, T, 32)
            out, _ = self.gru(seq)
            return torch.softmax(self.fc(out.mean(1)), 1)

    torch.manual_seed(11)
    model = SpectroGRU().eval()
    x = torch.randn(3, 1, 8, 20)
    exp = onnx_cam.Explainer(model, example_input=x)
    targets = [2, 0, 1]
    _, per_layer = exp.activations_and_gradients(x.numpy(), targets=targets, layers="relu")
    acts = model.relu(model.conv(x)).detach().requires_grad_(True)
    seq = acts.flatten(1, 2).transpose(1, 2)
    logits = model.fc(model.gru(seq)[0].mean(1))
    logits[torch.arange(3), torch.tensor(targets)].sum().backward()
    ref = acts.grad.numpy()
    np.testing.assert_allclose(per_layer["relu"][1], ref, rtol=1e-4,
                               atol=1e-6 * np.abs(ref).max())
