"""The onnx-cam command, called in-process and once as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import onnx_cam
from onnx_cam.cli import main


@pytest.fixture(scope="module")
def model_file(cnn1d, tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "model.onnx"
    path.write_bytes(cnn1d[2])
    return path


def test_layers_lists_input_head_and_layers(model_file, capsys):
    assert main(["layers", str(model_file), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["head"] == "Softmax" and info["classes"] == 3
    assert info["layers"][0]["name"] == "/3/Relu_output_0"
    assert info["layers"][0]["shape"] == ["N", 8, 20]


def test_explain_writes_maps_and_summary(model_file, cnn1d, tmp_path):
    model, x, _ = cnn1d
    np.save(tmp_path / "a.npy", x[:3].numpy())
    np.savez(tmp_path / "b.npz", rest=x[3:].numpy())
    out = tmp_path / "out"
    code = main(["explain", str(model_file), str(tmp_path / "a.npy"), str(tmp_path / "b.npz"),
                 "--out", str(out), "--method", "gradcam", "--method", "hirescam",
                 "--target", "1"])
    assert code == 0
    res = onnx_cam.Explanation.load(out / "cams.npz")
    direct = onnx_cam.Explainer(model_file).explain(x.numpy(), targets=1,
                                                    methods=["gradcam", "hirescam"])
    np.testing.assert_allclose(res.cam("hirescam"), direct.cam("hirescam"), atol=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items"] == 5 and [r["target"] for r in summary["rows"]] == [1] * 5
    with torch.no_grad():
        probs = model(x).numpy()
    np.testing.assert_allclose([r["probability"] for r in summary["rows"]], probs[:, 1],
                               rtol=1e-4)


@pytest.mark.parametrize("payload, words", [
    (b"not an array", "Cannot read"),
    (None, "takes 2 channels"),
])
def test_bad_input_exits_2_with_a_message(model_file, tmp_path, capsys, payload, words):
    path = tmp_path / "x.npy"
    if payload is None:
        np.save(path, np.zeros((2, 5, 40), np.float32))
    else:
        path.write_bytes(payload)
    assert main(["explain", str(model_file), str(path), "--out", str(tmp_path / "o")]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "o" / "cams.npz").exists()


def test_runs_as_a_program(model_file, tmp_path):
    done = subprocess.run([sys.executable, "-m", "onnx_cam.cli", "layers", str(model_file)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "layers (deepest first):" in done.stdout
