"""RuntimeOptions: what ONNX Runtime's threads do after a run, and refused settings."""

import time

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_cam
from onnx_cam.runtime import RuntimeOptions, make_session


def _matmul_model():
    w = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _cpu_after_runs(spinning) -> float:
    """Process CPU seconds spent during the 0.1 s after each of three runs."""
    session = make_session(_matmul_model(), RuntimeOptions(intra_op_threads=2,
                                                          spinning=spinning))
    x = np.ones((2048, 512), np.float32)
    session.run(None, {"x": x})
    spent = 0.0
    for _ in range(3):
        session.run(None, {"x": x})
        before = time.process_time()
        time.sleep(0.1)
        spent += time.process_time() - before
    return spent


def test_threads_stop_spinning_when_a_run_ends_unless_always():
    always = _cpu_after_runs("always")  # ONNX Runtime's default: a core busy for tens of ms
    assert always > 0.015
    for setting in ("during runs", "never", False):
        assert _cpu_after_runs(setting) < always / 5, setting


@pytest.mark.parametrize("field, value", [("spinning", "sometimes"), ("spinning", 1),
                                          ("optimization", "max")])
def test_unknown_settings_are_refused_by_name(field, value):
    with pytest.raises(onnx_cam.OnnxCamError, match=f"{field}={value!r}"):
        RuntimeOptions(**{field: value})


def test_booleans_name_the_two_ends():
    assert RuntimeOptions(spinning=True) == RuntimeOptions(spinning="always")
    assert RuntimeOptions(spinning=False) == RuntimeOptions(spinning="never")
