"""Large inputs are explained within the memory budget (batches shrink to fit it) or refused
up front with the memory they would need. Peak memory is measured in fresh subprocesses."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import onnx_cam
from onnx_cam import InputError, MemoryBudgetError, memory
from onnx_cam.converters import export_torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
MB = 2**20


# ---- the budget ----------------------------------------------------------------------------
@pytest.mark.parametrize("text, size", [
    ("8GB", 8 * 10**9), ("512 MiB", 512 * MB), ("1.5g", int(1.5 * 2**30)), (4096, 4096),
    (2.5e9, 2_500_000_000), ("100", 100),
])
def test_sizes_parse(text, size):
    assert memory.parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "-1GB", "0", "8 parsecs", float("nan"), True])
def test_bad_sizes_are_refused(text):
    with pytest.raises(InputError, match="Memory size"):
        memory.parse_size(text)


def test_budget_comes_from_argument_then_environment_then_the_machine(monkeypatch):
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < memory.machine_memory() <= physical
    monkeypatch.delenv(memory.ENV_VAR, raising=False)
    assert memory.memory_budget() == int(0.75 * memory.machine_memory())
    monkeypatch.setenv(memory.ENV_VAR, "3GiB")
    assert memory.memory_budget() == 3 * 2**30
    assert memory.memory_budget("1GB") == 10**9
    with pytest.raises(InputError):
        onnx_cam.Explainer(b"", max_memory="a lot")  # checked before the model is read


# ---- the estimate ----------------------------------------------------------------------------
def test_footprint_of_a_small_graph_matches_a_hand_count():
    """x -> Relu -> a; b = a * w; c = a + b (output). Per item each tensor is 4 x 100 floats
    (1600 bytes); w is 16 bytes. While Add runs, x, a, b and c are alive: 4 x 1600 + 16."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Mul", ["a", "w"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["c"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 100])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 4, 100])],
        [numpy_helper.from_array(np.ones((1, 4, 1), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    footprint = memory.run_footprint(model)
    assert footprint.bytes(1) == 4 * 1600 + 16
    assert footprint.bytes(3) == 3 * 4 * 1600 + 16
    assert footprint.max_batch(10 * 6400 + 16) == 10
    assert footprint.max_batch(6400 + 15) == 0
    assert footprint.outputs == {"c": 1600}


# ---- models ----------------------------------------------------------------------------------
def cnn(dims: int, width: int, channels: int) -> nn.Module:
    conv = {1: nn.Conv1d, 3: nn.Conv3d}[dims]
    pool = {1: nn.AdaptiveAvgPool1d, 3: nn.AdaptiveAvgPool3d}[dims]
    torch.manual_seed(0)
    return nn.Sequential(conv(channels, width, 7 if dims == 1 else 3, padding="same"),
                         nn.ReLU(), conv(width, width, 7 if dims == 1 else 3, padding="same"),
                         nn.ReLU(), pool(1), nn.Flatten(), nn.Linear(width, 3)).eval()


def save(model: nn.Module, example: torch.Tensor, path: pathlib.Path) -> pathlib.Path:
    export_torch(model, example, path)
    return path


def peak_in_subprocess(model_path, shape, max_memory, batch_size=64, out=None) -> dict:
    """Explain random inputs of `shape` in a fresh process; the peak resident memory the call
    added (Linux VmHWM, reset just before), the batches it ran, and the raw maps (to `out`)."""
    code = textwrap.dedent(f"""
        import json, numpy as np, onnx_cam
        def status(key):
            return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
                        if line.startswith(key))
        x = np.random.default_rng(0).standard_normal({tuple(shape)!r}).astype(np.float32)
        exp = onnx_cam.Explainer({str(model_path)!r}, max_memory={max_memory!r})
        batches = []
        open("/proc/self/clear_refs", "w").write("5")
        before = status("VmRSS")
        res = exp.explain(x, targets=0, batch_size={batch_size},
                          progress=lambda done, total: batches.append(done))
        added = status("VmHWM") - before
        if {str(out)!r} != "None":
            np.save({str(out)!r}, res.raw())
        print(json.dumps({{"added": added, "batches": len(batches)}}))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def torch_gradcam(model: nn.Sequential, x: np.ndarray, layer: int, target: int) -> np.ndarray:
    kept = {}
    handle = model[layer].register_forward_hook(lambda m, i, out: kept.update(a=out))
    score = model(torch.from_numpy(x))[:, target].sum()
    handle.remove()
    (grad,) = torch.autograd.grad(score, kept["a"])
    return torch.relu((grad.mean(2, keepdim=True) * kept["a"]).sum(1)).detach().numpy()


# ---- bounded or refused -------------------------------------------------------------------------
def test_batches_shrink_to_the_budget_and_the_peak_stays_under_it(tmp_path):
    model = cnn(1, 16, 12)
    path = save(model, torch.randn(2, 12, 100_000), tmp_path / "ecg.onnx")
    shape, budget = (8, 12, 100_000), 160 * MB
    bounded = peak_in_subprocess(path, shape, budget, out=tmp_path / "raw.npy")
    unbounded = peak_in_subprocess(path, shape, "100GB")
    assert bounded["batches"] > 1 and unbounded["batches"] == 1
    assert bounded["added"] <= budget < unbounded["added"], (bounded, unbounded)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    want = torch_gradcam(model, x[:2], 3, 0)  # the deepest layer: the last ReLU
    np.testing.assert_allclose(np.load(tmp_path / "raw.npy")[:2], want, rtol=1e-4,
                               atol=1e-5 * want.max())


def test_a_12_lead_500k_sample_signal_fits_a_small_budget(tmp_path):
    path = save(cnn(1, 16, 12), torch.randn(1, 12, 500_000), tmp_path / "long.onnx")
    budget = 800 * MB
    peak = peak_in_subprocess(path, (2, 12, 500_000), budget)
    assert peak["batches"] == 2 and peak["added"] <= budget, peak


def test_a_256_cubed_volume_is_refused_up_front_with_what_it_needs(tmp_path, monkeypatch):
    x = np.zeros((1, 1, 256, 256, 256), np.float32)
    exp = onnx_cam.Explainer(save(cnn(3, 4, 1), torch.from_numpy(x), tmp_path / "v.onnx"),
                             max_memory="512MiB")
    runs = []
    monkeypatch.setattr(onnxruntime.InferenceSession, "run",
                        lambda *a, **k: runs.append(a))
    with pytest.raises(MemoryBudgetError, match="budget of 0.50 GiB") as info:
        exp.explain(x, targets=0)
    assert not runs
    need = float(re.search(r"needs about ([\d.]+) GiB", str(info.value)).group(1))
    # at least the input, both convolutions' outputs and the layer's gradient, one item
    floor = (1 + 4 + 4 + 4) * 256**3 * 4 / 2**30
    assert floor <= need <= 6 * floor, (need, floor)
    assert "max_memory" in str(info.value) and "ONNX_CAM_MAX_MEMORY" in str(info.value)


def test_too_many_rows_for_the_budget_are_refused_up_front(tmp_path):
    exp = onnx_cam.Explainer(save(cnn(1, 4, 2), torch.randn(1, 2, 1000), tmp_path / "s.onnx"),
                             max_memory="20MB")
    x = np.zeros((2000, 2, 1000), np.float32)  # its maps alone: 2000 x 1000 x 4 x 2 bytes
    with pytest.raises(MemoryBudgetError, match="explain fewer items per call"):
        exp.explain(x, targets="all")  # 3 rows per item
