"""The onnx-cam command: in-process main([...]) calls, and each subcommand once as a program.

References: the maps of Explainer.explain on inputs preprocessed in numpy here, the torch
module's own outputs, and the files as written by numpy / Pillow in the test.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn

import onnx_cam
from onnx_cam.cli import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, main
from onnx_cam.cli import explain as explain_command
from onnx_cam.converters import export_torch

CLASSES = ["cat", "dog", "owl"]
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def program(*args, cwd=None, **kwargs) -> subprocess.CompletedProcess:
    """onnx-cam as a separate process, as a shell would run it."""
    return subprocess.run([sys.executable, "-m", "onnx_cam.cli", *map(str, args)], cwd=cwd,
                          text=True, timeout=180, **kwargs)


@pytest.fixture(scope="module")
def model_file(cnn1d, tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "model.onnx"
    path.write_bytes(cnn1d[2])
    return path


@pytest.fixture(scope="module")
def image_model(tmp_path_factory):
    """A 3-channel 2D net on 16 x 16 images, with class names, and its file."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
                        nn.Softmax(dim=1)).eval()
    path = tmp_path_factory.mktemp("m") / "images.onnx"
    export_torch(net, torch.randn(1, 3, 16, 16), path, class_names=CLASSES)
    return net, path


def outputs(out) -> list[str]:
    return sorted(os.listdir(out)) if out.exists() else []


# ---- layers -------------------------------------------------------------------------------
def test_layers_lists_input_head_and_layers(model_file, capsys):
    assert main(["layers", str(model_file), "--json"]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert info["head"] == "Softmax" and info["classes"] == 3
    assert info["input"] == {"name": "input", "shape": [None, 2, 40], "channels_last": False}
    assert info["layers"][0]["name"] == "/3/Relu_output_0"
    assert info["layers"][0]["shape"] == ["N", 8, 20]
    assert main(["layers", str(model_file)]) == EXIT_OK
    text = capsys.readouterr().out
    assert "input   input (N, 2, 40), channels-first" in text and "/3/Relu_output_0" in text


def test_layers_runs_as_a_program(model_file):
    done = program("layers", model_file, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert "layers (deepest first" in done.stdout


def test_layers_shortened_by_top_op_and_match(model_file, capsys):
    assert main(["layers", str(model_file), "--json"]) == EXIT_OK
    every = json.loads(capsys.readouterr().out)["layers"]
    assert main(["layers", str(model_file), "--json", "--top", "2"]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert info["layers"] == every[:2] and info["hidden"] == len(every) - 2
    assert main(["layers", str(model_file), "--json", "--op", "Conv,MaxPool"]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    wanted = [la for la in every if la["op"] in ("Conv", "MaxPool")]
    assert info["layers"] == wanted and 0 < len(wanted) < len(every)
    assert main(["layers", str(model_file), "--json", "--match", "/3/"]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert [la["tensor"] for la in info["layers"]] == [
        la["tensor"] for la in every if any("/3/" in n for n in [la["name"], *la["aliases"]])]
    assert main(["layers", str(model_file), "--top", "1"]) == EXIT_OK
    assert f"({len(every) - 1} more not shown" in capsys.readouterr().out
    assert main(["layers", str(model_file), "--top", "0"]) == EXIT_USAGE


def test_layers_table_columns_align_to_the_longest_name(tmp_path, capsys):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a_convolution_with_a_name_longer_than_32_characters = nn.Conv1d(2, 4, 3)
            self.c = nn.Conv1d(4, 4, 3)
            self.head = nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 2))

        def forward(self, x):
            x = self.a_convolution_with_a_name_longer_than_32_characters(x)
            return self.head(torch.relu(self.c(x)))

    path = tmp_path / "long.onnx"
    export_torch(Net().eval(), torch.randn(1, 2, 20), path)
    assert main(["layers", str(path)]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("layers (deepest first; the first is --layer auto):") + 1
    rows = [re.fullmatch(r"  (\S+) +(\S+) +(\[.*\])", line) for line in lines[start:]]
    assert len(rows) >= 3 and all(rows)
    assert "a_convolution_with_a_name_longer_than_32_characters" in [r[1] for r in rows]
    assert len({r.start(2) for r in rows}) == 1 and len({r.start(3) for r in rows}) == 1


# ---- explain: arrays, images, CSV ---------------------------------------------------------
def test_explain_arrays_writes_maps_and_summary(model_file, cnn1d, tmp_path, capsys):
    model, x, _ = cnn1d
    np.save(tmp_path / "a.npy", x[:3].numpy())
    np.savez(tmp_path / "b.npz", rest=x[3:].numpy())
    out = tmp_path / "out"
    code = main(["explain", str(model_file), str(tmp_path / "a.npy"), str(tmp_path / "b.npz"),
                 "--out", str(out), "--method", "gradcam", "--method", "hirescam",
                 "--target", "1"])
    assert code == EXIT_OK
    assert "explained 5 items" in capsys.readouterr().out
    res = onnx_cam.Explanation.load(out / "cams.npz")
    direct = onnx_cam.Explainer(model_file).explain(x.numpy(), targets=1,
                                                    methods=["gradcam", "hirescam"])
    np.testing.assert_allclose(res.cam("hirescam"), direct.cam("hirescam"), atol=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items"] == 5 and [r["target"] for r in summary["rows"]] == [1] * 5
    assert [r["file"] for r in summary["rows"]] == [str(tmp_path / "a.npy")] * 3 + [
        str(tmp_path / "b.npz")] * 2
    with torch.no_grad():
        probs = model(x).numpy()
    np.testing.assert_allclose([r["probabilities"] for r in summary["rows"]], probs, rtol=1e-4)
    np.testing.assert_allclose([r["probability"] for r in summary["rows"]], probs[:, 1],
                               rtol=1e-4)
    np.testing.assert_allclose([r["score_ranges"]["hirescam//3/Relu_output_0"]
                                for r in summary["rows"]],
                               direct.score_range("hirescam"), rtol=1e-5)
    assert outputs(out) == ["cams.npz", "summary.json"]  # no temporary files left


def test_explain_input_attributions_beside_cams(model_file, cnn1d, tmp_path, capsys):
    model, x, _ = cnn1d
    np.save(tmp_path / "a.npy", x.numpy())
    out = tmp_path / "out"
    code = main(["explain", str(model_file), str(tmp_path / "a.npy"), "--out", str(out),
                 "--method", "gradcam", "--method", "input_x_gradient", "--method",
                 "integrated_gradients", "--target", "1", "--format", "npy", "--quiet"])
    assert code == EXIT_OK
    assert "attribution_input_x_gradient_input.npy" in outputs(out)
    xg = x.clone().requires_grad_()
    model[:-1](xg)[:, 1].sum().backward()  # the logits, before the softmax
    reference = (xg * xg.grad).detach().numpy()
    np.testing.assert_allclose(np.load(out / "attribution_input_x_gradient_input.npy"),
                               reference, rtol=1e-4, atol=1e-7)
    total = np.abs(reference.sum(1))
    lo, hi = total.min(1, keepdims=True), total.max(1, keepdims=True)
    np.testing.assert_allclose(np.load(out / "cam_input_x_gradient_input.npy"),
                               (total - lo) / (hi - lo), atol=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"] == ["gradcam", "input_x_gradient", "integrated_gradients"]
    gaps = [r["info"]["integrated_gradients"]["completeness_gap"] for r in summary["rows"]]
    assert len(gaps) == len(x) and max(map(abs, gaps)) < 1e-2
    assert "integrated_gradients/input" in summary["rows"][0]["score_ranges"]


def test_explain_images_with_preprocessing(image_model, tmp_path, rng, capsys):
    net, path = image_model
    pixels = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    names = ["a.png", "b.png", "c.bmp"]
    for name, p in zip(names, pixels):
        Image.fromarray(p).save(tmp_path / name)
    out = tmp_path / "out"
    code = main(["explain", str(path), *(str(tmp_path / n) for n in names), "--out", str(out),
                 "--mean", *map(str, MEAN), "--std", *map(str, STD), "--scale", "1/255",
                 "--layer", "2", "--json"])
    assert code == EXIT_OK
    summary = json.loads(capsys.readouterr().out)
    x = ((pixels / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2).astype(np.float32)  # reference
    with torch.no_grad():
        probs = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose([r["probabilities"] for r in summary["rows"]], probs, rtol=1e-4)
    assert [r["predicted_name"] for r in summary["rows"]] == [CLASSES[k] for k in
                                                              probs.argmax(1)]
    direct = onnx_cam.Explainer(path).explain(x, layers="2")
    np.testing.assert_allclose(onnx_cam.Explanation.load(out / "cams.npz").cam(), direct.cam(),
                               atol=1e-5)
    assert summary["preprocess"]["mean"] == list(MEAN) and summary["class_names"] == CLASSES


@pytest.mark.parametrize("which", ["signals", "images"])
def test_explain_plot_draws_one_figure_per_row(which, model_file, cnn1d, image_model, tmp_path,
                                               capsys):
    if which == "signals":
        model, x = model_file, cnn1d[1][:3].numpy()
        extra = ["--fs", "100", "--channel-names", "lead I,lead II"]
    else:
        model, x = image_model[1], np.random.default_rng(0).normal(size=(2, 3, 16, 16))
        extra = ["--cmap", "viridis"]
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    out = tmp_path / "out"
    assert main(["explain", str(model), str(tmp_path / "x.npy"), "--out", str(out), "--plot",
                 "--target", "1", "--json", *extra]) == EXIT_OK
    figures = json.loads(capsys.readouterr().out)["files"]["figures"]
    assert len(figures) == len(x)
    for name in figures:
        image = np.asarray(Image.open(out / name).convert("RGB"))
        assert image.shape[0] > 100 and image.std() > 10  # drawn, not blank
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(
        Path(f).name for f in figures)  # and no temporary file left


def test_explain_plot_prints_each_figure_path_on_its_own_line(model_file, cnn1d, tmp_path,
                                                              capsys):
    np.save(tmp_path / "x.npy", cnn1d[1][:2].numpy())
    out = tmp_path / "out"
    assert main(["explain", str(model_file), str(tmp_path / "x.npy"), "--out", str(out),
                 "--plot"]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("2 figures:")
    figures = lines[start + 1:]
    assert len(figures) == 2 and "[" not in "".join(lines)
    for line in figures:
        assert Path(line).parent == out / "figures" and Path(line).is_file()


def test_explain_jpeg_resized_to_the_model(image_model, tmp_path, capsys):
    net, path = image_model
    ramp = np.linspace(0, 255, 20 * 24 * 3).reshape(20, 24, 3).astype(np.uint8)
    Image.fromarray(ramp).save(tmp_path / "photo.jpg", quality=95)
    assert main(["explain", str(path), str(tmp_path / "photo.jpg"), "--out",
                 str(tmp_path / "o"), "--json", "--target", "owl"]) == EXIT_OK
    row = json.loads(capsys.readouterr().out)["rows"][0]
    resized = Image.open(tmp_path / "photo.jpg").convert("RGB").resize((16, 16),
                                                                        Image.BILINEAR)
    x = (np.asarray(resized, np.float32) / 255).transpose(2, 0, 1)[None]
    with torch.no_grad():
        probs = net(torch.from_numpy(x)).numpy()[0]
    assert row["target_name"] == "owl"
    np.testing.assert_allclose(row["probabilities"], probs, rtol=1e-4)


@pytest.mark.parametrize("header", [True, False])
def test_explain_csv_signal(model_file, cnn1d, tmp_path, capsys, header):
    _, x, _ = cnn1d
    signal = x[0].numpy().T  # (T, C): a row per sample, a column per channel
    np.savetxt(tmp_path / "s.csv", signal, delimiter=",", header="lead1,lead2" if header else "",
               comments="", fmt="%.9g")
    out = tmp_path / "out"
    assert main(["explain", str(model_file), str(tmp_path / "s.csv"), "--out", str(out),
                 "--format", "npy", "--method", "gradcam", "--method", "layercam",
                 "--quiet"]) == EXIT_OK
    assert capsys.readouterr().out == ""
    summary = json.loads((out / "summary.json").read_text())
    direct = onnx_cam.Explainer(model_file).explain(x[:1].numpy(),
                                                    methods=["gradcam", "layercam"])
    assert summary["files"] == {"gradcam//3/Relu_output_0": "cam_gradcam_3_Relu_output_0.npy",
                                "layercam//3/Relu_output_0":
                                    "cam_layercam_3_Relu_output_0.npy"}
    for key, name in summary["files"].items():
        method = key.split("/")[0]
        np.testing.assert_allclose(np.load(out / name), direct.cam(method), atol=1e-5)
    assert outputs(out) == sorted([*summary["files"].values(), "summary.json"])


def test_explain_runs_as_a_program(model_file, cnn1d, tmp_path):
    _, x, _ = cnn1d
    np.save(tmp_path / "x.npy", x.numpy())
    done = program("explain", model_file, tmp_path / "x.npy", "--out", tmp_path / "o",
                   "--target", "top2", capture_output=True)
    assert done.returncode == 0, done.stderr
    assert "explained 5 items (10 maps" in done.stdout
    assert done.stderr == ""  # stderr is a pipe: no progress bar
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert [r["item"] for r in summary["rows"]] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_bar_on_a_terminal_unless_quiet(model_file, cnn1d, tmp_path, monkeypatch,
                                                 quiet):
    np.save(tmp_path / "x.npy", np.concatenate([cnn1d[1].numpy()] * 4))
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert main(["explain", str(model_file), str(tmp_path / "x.npy"), "--out",
                 str(tmp_path / "o"), "--batch-size", "4", *(["--quiet"] * quiet)]) == EXIT_OK
    shown = sys.stderr.getvalue()
    assert ("explaining" in shown) != quiet, shown  # how often it redraws depends on time


def test_explain_reports_progress_per_batch(model_file, cnn1d):
    _, x, _ = cnn1d
    calls = []
    onnx_cam.Explainer(model_file).explain(x.numpy(), batch_size=2,
                                           progress=lambda *a: calls.append(a))
    assert calls == [(2, 5), (4, 5), (5, 5)]


# ---- explain: failures --------------------------------------------------------------------
def _write_bad(kind: str, folder):
    if kind == "corrupt png":
        (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
        return folder / "bad.png"
    if kind == "ragged csv":
        (folder / "bad.csv").write_text("1,2\n3,4\n5\n6,7\n")
        return folder / "bad.csv"
    if kind == "zero items":
        np.save(folder / "bad.npy", np.zeros((0, 2, 40), np.float32))
        return folder / "bad.npy"
    if kind == "pickle npy":
        np.save(folder / "bad.npy", np.array([object()], dtype=object), allow_pickle=True)
        return folder / "bad.npy"
    np.save(folder / "bad.npy", np.zeros((2, 5, 40), np.float32))  # 5 channels, model takes 2
    return folder / "bad.npy"


@pytest.mark.parametrize("kind, words", [
    ("corrupt png", "is not a readable image"),
    ("ragged csv", "line 3: 1 cells"),
    ("pickle npy", "never unpickles"),
    ("zero items", "holds no values (arrays shaped [[0, 2, 40]]); give at least one item"),
    ("wrong shape", "its items are shaped (5, 40), the model takes (2, 40)"),
])
def test_bad_input_exits_2_naming_the_file(model_file, cnn1d, tmp_path, capsys, kind, words):
    np.save(tmp_path / "good.npy", cnn1d[1].numpy())
    bad = _write_bad(kind, tmp_path)
    out = tmp_path / "o"
    code = main(["explain", str(model_file), str(tmp_path / "good.npy"), str(bad),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err.startswith("onnx-cam: error: ") and str(bad) in err and words in err
    assert err.count("\n") == 1  # one line, no traceback
    assert outputs(out) == []


def test_bad_options_exit_2(model_file, cnn1d, tmp_path, capsys):
    np.save(tmp_path / "x.npy", cnn1d[1].numpy())
    base = ["explain", str(model_file), str(tmp_path / "x.npy"), "--out", str(tmp_path / "o")]
    assert main([*base, "--layer", "nope"]) == EXIT_USAGE
    assert "nope" in capsys.readouterr().err
    assert main([*base, "--scale", "1/0"]) == EXIT_USAGE
    assert "1/0" in capsys.readouterr().err
    assert main(["explain", str(model_file)]) == EXIT_USAGE  # no input, no --out
    assert main(["explain", str(tmp_path / "x.npy"), str(tmp_path / "x.npy"), "--out",
                 str(tmp_path / "o")]) == EXIT_USAGE  # not a model
    assert outputs(tmp_path / "o") == []


def test_a_failed_write_leaves_no_partial_file(model_file, cnn1d, tmp_path, monkeypatch,
                                               capsys):
    np.save(tmp_path / "x.npy", cnn1d[1].numpy())
    real_save = np.save

    def save_then_fail(handle, array):
        real_save(handle, array[:1])  # half a file on disk, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", save_then_fail)
    out = tmp_path / "o"
    code = main(["explain", str(model_file), str(tmp_path / "x.npy"), "--out", str(out),
                 "--format", "npy"])
    assert code == EXIT_USAGE and "No space left" in capsys.readouterr().err
    assert outputs(out) == []  # neither the map, nor a temporary file, nor summary.json


def test_internal_errors_exit_1_with_the_traceback(model_file, monkeypatch, capsys):
    def bug(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(explain_command, "explain", bug)
    assert main(["explain", str(model_file), "x.npy", "--out", "o"]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err and "internal error" in err


@pytest.mark.parametrize("command", [[], ["layers"], ["explain"], ["convert"],
                                     ["convert", "torch"], ["convert", "keras"]])
def test_help_teaches_with_examples_and_defaults(command, capsys):
    assert main([*command, "--help"]) == EXIT_OK
    text = capsys.readouterr().out
    assert "example" in text or "start here" in text
    if command in (["explain"], ["convert", "torch"]):
        assert text.count("(default") >= 5


# ---- convert ------------------------------------------------------------------------------
NET_SOURCE = textwrap.dedent("""
    from torch import nn

    def make_net(classes=3, width=4):
        return nn.Sequential(
            nn.Conv1d(2, width, 5, padding=2), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Conv1d(width, 6, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(6, classes))
""")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder holding a model module (unique name per test) and a trained state dict."""
    name = f"nets_{os.path.basename(tmp_path)}".replace("-", "_")
    (tmp_path / f"{name}.py").write_text(NET_SOURCE)
    namespace: dict = {}
    exec(NET_SOURCE, namespace)
    torch.manual_seed(1)
    net = namespace["make_net"](classes=4, width=5).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        net[1].running_mean.normal_()
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return name, net


def ort_outputs(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_convert_torch_round_trip(project, tmp_path, capsys):
    name, net = project
    code = main(["convert", "torch", f"{name}:make_net", "--weights", "weights.pt",
                 "--factory-args", '{"classes": 4, "width": 5}', "--input-shape", "1,2,50",
                 "--class-names", "a,b,c,d", "--out", "out/net.onnx", "--json"])
    assert code == EXIT_OK, capsys.readouterr().err
    info = json.loads(capsys.readouterr().out)
    assert info["out"] == os.path.join("out", "net.onnx") and info["class_names"] == list("abcd")
    assert {"4", "3", "0"} <= {layer["name"] for layer in info["layers"]}  # module names
    x = np.random.default_rng(0).standard_normal((3, 2, 50)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ort_outputs(tmp_path / "out" / "net.onnx", x), expected,
                               rtol=1e-4, atol=1e-5)


def test_convert_torch_runs_as_a_program(project, tmp_path):
    name, net = project
    (tmp_path / "names.txt").write_text("normal\naf\n\nother\nnoisy\n")
    done = program("convert", "torch", f"{name}:make_net", "--weights", "weights.pt",
                   "--factory-args", "[4, 5]", "--input-shape", "2,2,30",
                   "--class-names-file", "names.txt", "--out", "net.onnx",
                   cwd=tmp_path, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert "wrote net.onnx" in done.stdout and "normal, af, other, noisy" in done.stdout
    x = np.random.default_rng(1).standard_normal((2, 2, 30)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ort_outputs(tmp_path / "net.onnx", x), expected, rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("change, words", [
    ({"factory": "no_such_module:make_net"}, "No module 'no_such_module'"),
    ({"factory": "{name}:missing"}, "has no 'missing'"),
    ({"factory": "{name}"}, "is not MODULE:FACTORY"),
    ({"args": '{"colours": 3}'}, "Calling"),
    ({"args": "{}"}, "do not fit the model"),  # default width 4, weights of width 5
    ({"weights": "whole.pt"}, "weights_only=True"),
    ({"class_names": "a,b"}, "class_names has 2 names but the model scores 4"),
])
def test_convert_torch_errors_exit_2_and_write_nothing(project, tmp_path, capsys, change,
                                                       words):
    name, net = project
    torch.save(net, tmp_path / "whole.pt")  # a pickled module, not a state dict
    factory = change.get("factory", "{name}:make_net").format(name=name)
    code = main(["convert", "torch", factory, "--weights", change.get("weights", "weights.pt"),
                 "--factory-args", change.get("args", "[4, 5]"), "--input-shape", "1,2,30",
                 "--class-names", change.get("class_names", "a,b,c,d"), "--out", "net.onnx"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and words in err, err
    assert not (tmp_path / "net.onnx").exists()
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


@pytest.mark.slow
def test_convert_keras_round_trip(tmp_path, capsys):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    inp = keras.Input((40, 3))
    h = keras.layers.Conv1D(4, 5, padding="same", activation="relu", name="conv1")(inp)
    h = keras.layers.GlobalAveragePooling1D(name="gap")(h)
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="head")(h))
    model.save(tmp_path / "m.keras")
    out = tmp_path / "m.onnx"
    assert main(["convert", "keras", str(tmp_path / "m.keras"), "--out", str(out),
                 "--class-names", "yes,no", "--json"]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert info["input"]["channels_last"] and "conv1" in [la["name"] for la in info["layers"]]
    x = np.random.default_rng(0).standard_normal((3, 40, 3)).astype(np.float32)
    np.testing.assert_allclose(ort_outputs(out, x), model.predict(x, verbose=0), rtol=1e-4,
                               atol=1e-6)
