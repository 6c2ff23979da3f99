"""ONNX Loop nodes: unrolled when their trip count is fixed, refused with the reason otherwise.

A hand-written Loop (the form tf2onnx gives a Keras RNN: the sequence read from the enclosing
graph at the iteration number, a state and an integer counter carried, each state stacked)
is checked against the same recurrence written in torch (float64 autograd): logits, and the
gradient at a layer below the loop, which reaches it through the initial state, through
every step's input and through both the final state and the stacked states. Keras GRU,
SimpleRNN and Bidirectional GRU models are checked against tf.GradientTape in test_keras.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

import onnx_cam  # noqa: E402
from onnx_cam.errors import UnsupportedModelError, UnsupportedOpError  # noqa: E402
from onnx_cam.graph import unroll  # noqa: E402

T, C, K, H, CLASSES = 9, 2, 4, 5, 3
ACT = "act"  # the layer explained: Relu(Conv(x)), below the loop


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {"conv_w": (K, C, 3), "w0": (K, H), "w": (K, H), "u": (H, H), "wf": (H, CLASSES),
              "ws": (H, CLASSES)}
    return {k: (rng.standard_normal(s) * 0.6).astype(np.float32) for k, s in shapes.items()}


TIME_WEIGHTS = np.linspace(0.5, 1.5, T, dtype=np.float32).reshape(T, 1, 1)


def loop_model(weights, trips=None, cond_stop=None, data_cond=False, body_op="Tanh",
               data_trips=False, scan=None) -> bytes:
    """x (N, C, T) -> act = Relu(Conv) -> seq (T, N, K) -> Loop: h = body_op(x_i W + h U),
    h0 = tanh(mean_t(act) W0), a counter k += 1 carried; scores = h_last Wf +
    mean_t(v_t h_t) Ws, the states weighted by time (so their order counts).

    scan="forward" / "backward": a Scan over seq instead (backward: over (N, T, K) along axis
    1 from its end, the states stacked back in time order).

    cond_stop: the body's condition is k < cond_stop (k counts the iterations run);
    data_cond: it is sum(h) < 100 instead; data_trips: the trip count is computed from x."""
    c = numpy_helper.from_array
    f32 = TensorProto.FLOAT
    body_nodes = [
        helper.make_node("Gather", ["seq", "i"], ["x_i"], axis=0),
        helper.make_node("MatMul", ["x_i", "w"], ["xw"]),
        helper.make_node("MatMul", ["h_in", "u"], ["hu"]),
        helper.make_node("Add", ["xw", "hu"], ["pre"]),
        helper.make_node(body_op, ["pre"], ["h_out"]),
        helper.make_node("Add", ["k_in", "one"], ["k_out"]),
        helper.make_node("Identity", ["h_out"], ["h_scan"]),
    ]
    if data_cond:
        body_nodes += [helper.make_node("ReduceSum", ["h_out"], ["total"], keepdims=0),
                       helper.make_node("Less", ["total", "hundred"], ["cond_out"])]
    else:
        body_nodes.append(helper.make_node("Less", ["k_out", "stop"], ["cond_out"]))
    body = helper.make_graph(
        body_nodes, "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", f32, ["N", H]),
         helper.make_tensor_value_info("k_in", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", f32, ["N", H]),
         helper.make_tensor_value_info("k_out", TensorProto.INT64, []),
         helper.make_tensor_value_info("h_scan", f32, ["N", H])],
        [c(np.array(1, np.int64), "one"), c(np.array(100, np.float32), "hundred"),
         c(np.array(cond_stop if cond_stop else 10 ** 9, np.int64), "stop")])
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["conv"], pads=[1, 1], name="conv"),
        helper.make_node("Relu", ["conv"], [ACT], name="relu"),
        helper.make_node("Transpose", [ACT], ["seq"], perm=[2, 0, 1]),
        helper.make_node("ReduceMean", [ACT, "axis2"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w0"], ["h0_pre"]),
        helper.make_node("Tanh", ["h0_pre"], ["h0"]),
        helper.make_node("Loop", ["trips", "", "h0", "k0"], ["h_last", "k_last", "states"],
                         body=body, name="loop"),
        helper.make_node("MatMul", ["h_last", "wf"], ["s_last"]),
        helper.make_node("Mul", ["states", "time_weights"], ["weighted"]),
        helper.make_node("ReduceMean", ["weighted", "axis0"], ["mean_h"], keepdims=0),
        helper.make_node("MatMul", ["mean_h", "ws"], ["s_mean"]),
        helper.make_node("Add", ["s_last", "s_mean"], ["scores"]),
    ]
    inits = [c(v, k) for k, v in weights.items()]
    inits += [c(np.array([2], np.int64), "axis2"), c(np.array([0], np.int64), "axis0"),
              c(np.array(0, np.int64), "k0"), c(TIME_WEIGHTS, "time_weights")]
    if data_trips:  # T + 0 * floor(max(x)), known only at run time
        nodes[:0] = [helper.make_node("ReduceMax", ["x"], ["peak"], keepdims=0),
                     helper.make_node("Floor", ["peak"], ["whole"]),
                     helper.make_node("Mul", ["whole", "zero"], ["nothing"]),
                     helper.make_node("Cast", ["nothing"], ["nothing_int"], to=TensorProto.INT64),
                     helper.make_node("Add", ["nothing_int", "steps"], ["trips"])]
        inits += [c(np.array(0, np.float32), "zero"), c(np.array(T, np.int64), "steps")]
    else:
        inits.append(c(np.array(trips or T, np.int64), "trips"))
    if scan is not None:
        _as_scan(nodes, scan == "backward", body_op)
    graph = helper.make_graph(nodes, "rnn", [helper.make_tensor_value_info("x", f32, ["N", C, T])],
                              [helper.make_tensor_value_info("scores", f32, ["N", CLASSES])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _as_scan(nodes: list, backward: bool, body_op: str) -> None:
    """The same recurrence as a Scan (states h, scanned input x_i, no counter)."""
    f32 = TensorProto.FLOAT
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x_i", "w"], ["xw"]),
         helper.make_node("MatMul", ["h_in", "u"], ["hu"]),
         helper.make_node("Add", ["xw", "hu"], ["pre"]),
         helper.make_node(body_op, ["pre"], ["h_out"]),
         helper.make_node("Identity", ["h_out"], ["h_scan"])], "body",
        [helper.make_tensor_value_info("h_in", f32, ["N", H]),
         helper.make_tensor_value_info("x_i", f32, ["N", K])],
        [helper.make_tensor_value_info("h_out", f32, ["N", H]),
         helper.make_tensor_value_info("h_scan", f32, ["N", H])])
    at = next(i for i, n in enumerate(nodes) if n.op_type == "Loop")
    attrs = dict(body=body, num_scan_inputs=1, name="loop")
    if backward:  # (N, T, K) read along axis 1 from the end; states stacked in time order
        seq = next(i for i, n in enumerate(nodes) if n.output[0] == "seq")
        nodes[seq] = helper.make_node("Transpose", [ACT], ["seq"], perm=[0, 2, 1])
        attrs.update(scan_input_axes=[1], scan_input_directions=[1],
                     scan_output_directions=[1])
    nodes[at] = helper.make_node("Scan", ["h0", "seq"], ["h_last", "states"], **attrs)


def torch_reference(weights, x: np.ndarray, seeds: np.ndarray, backward: bool = False):
    """Logits, act and d(sum(seeds * logits)) / d(act) of the same recurrence, float64."""
    w = {k: torch.tensor(v, dtype=torch.float64) for k, v in weights.items()}
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    act = torch.relu(torch.nn.functional.conv1d(xt, w["conv_w"], padding=1))
    act.retain_grad()
    h = torch.tanh(act.mean(2) @ w["w0"])
    states = [None] * T
    for i in reversed(range(T)) if backward else range(T):
        h = torch.tanh(act[:, :, i] @ w["w"] + h @ w["u"])
        states[i] = h
    weighted = torch.stack(states) * torch.tensor(TIME_WEIGHTS, dtype=torch.float64)
    logits = h @ w["wf"] + weighted.mean(0) @ w["ws"]
    (logits * torch.tensor(seeds, dtype=torch.float64)).sum().backward()
    return logits.detach().numpy(), act.detach().numpy(), act.grad.numpy()


def assert_close(got, ref, what, rtol=1e-4):
    err = float(np.abs(np.asarray(got, np.float64) - ref).max())
    assert err <= rtol * float(np.abs(ref).max()), f"{what}: max error {err:.3g}"


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(3).standard_normal((4, C, T)).astype(np.float32)


@pytest.mark.parametrize("scan", [None, "forward", "backward"])
def test_unrolled_loop_gradient_equals_torch(x, scan):
    weights = _weights()
    exp = onnx_cam.Explainer(loop_model(weights, scan=scan))
    assert not {"Loop", "Scan"} & {n.op for n in exp.model.graph((T,)).nodes}
    # neither one iteration's tensors nor the (T, N, H) states are offered
    assert "act" in exp.layers and not [n for n in exp.layers if "step" in n or n == "states"]
    targets = np.arange(len(x)) % CLASSES
    _, arrays = exp.activations_and_gradients(x, targets=targets, layers=[ACT])
    logits, act, grad = torch_reference(weights, x, np.eye(CLASSES)[targets],
                                        backward=scan == "backward")
    got_a, got_g = arrays[ACT]
    assert_close(exp.explain(x, targets=targets, layers=[ACT]).logits, logits, "logits")
    assert_close(got_a, act, "activations")
    assert_close(got_g, grad, "gradients")


@pytest.mark.parametrize("kwargs, message", [
    (dict(data_trips=True), r"Cannot differentiate Loop node 'loop': its trip count "
                            r"'trips' is computed at run time\. Export the model with a fixed "
                            r"sequence length"),
    (dict(data_cond=True), r"Loop node 'loop': whether it runs another iteration depends on "
                           r"the values it computes"),
    (dict(budget=8 * T - 1), rf"Loop node 'loop': unrolled, its {T} iterations of 8 nodes "
                             rf"would exceed the {8 * T - 1} nodes onnx-cam builds"),
    (dict(body_op="Cos"), r"Loop node 'loop': its body holds op Cos \(node 'h_out'\), which has no "
                          r"gradient rule\. Explain a layer above the loop"),
    (dict(body_op="Cos", scan="forward"), r"Cannot differentiate Scan node 'loop': its body "
                                          r"holds op Cos"),
])
def test_loop_that_cannot_be_unrolled_is_refused_with_the_reason(x, kwargs, message,
                                                                 monkeypatch):
    """Only when a gradient must cross it: the model loads and runs, gradient-free methods
    work at the same layer."""
    kwargs = dict(kwargs)
    if "budget" in kwargs:
        monkeypatch.setattr(unroll, "MAX_UNROLLED_NODES", kwargs.pop("budget"))
    exp = onnx_cam.Explainer(loop_model(_weights(), **kwargs))
    with pytest.raises(UnsupportedOpError, match=message):
        exp.explain(x, layers=[ACT])
    assert exp.explain(x, layers=[ACT], methods="eigencam").raw("eigencam", ACT).shape \
        == (len(x), T)


def test_loop_stopping_before_its_trip_count_is_refused():
    with pytest.raises(UnsupportedModelError,
                       match=r"Loop node 'loop' stops after iteration 2, before its trip "
                             rf"count \({T}\)"):
        onnx_cam.Explainer(loop_model(_weights(), cond_stop=3))
