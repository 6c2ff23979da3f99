"""Untrusted model and data files: loading never executes code, never reads outside what was
named, and refuses what ONNX Runtime should not see (onnx_cam.safety)."""

from __future__ import annotations

import ast
import os
import pathlib
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_cam
from onnx_cam import ModelLoadError, UnsupportedModelError, safety
from onnx_cam.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ---- external data ------------------------------------------------------------------------
@pytest.fixture
def external_model(cnn1d, tmp_path):
    """The 1D CNN saved with every weight in model/weights.bin, and a copy of that file
    outside the model's folder (same bytes, so only its location can be refused)."""
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save_model(onnx.load_from_string(cnn1d[2]), folder / "model.onnx",
                    save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    (tmp_path / "outside.bin").write_bytes((folder / "weights.bin").read_bytes())
    return folder / "model.onnx"


def relocate(model_path: pathlib.Path, location: str) -> pathlib.Path:
    """The same model with every external tensor pointing at `location`, written beside it."""
    proto = onnx.load(model_path, load_external_data=False)
    for tensor in safety.model_tensors(proto):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    out = model_path.with_name("evil.onnx")
    out.write_bytes(proto.SerializeToString())
    return out


def test_external_data_inside_the_folder_loads_and_explains(external_model, cnn1d):
    x = cnn1d[1][:2].numpy()
    got = onnx_cam.Explainer(external_model).explain(x).cam()
    want = onnx_cam.Explainer(cnn1d[2]).explain(x).cam()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("location, words", [
    ("../outside.bin", "outside the model's folder"),
    ("sub/../../outside.bin", "outside the model's folder"),
    ("ABSOLUTE", "outside the model's folder"),
    ("link.bin", "symbolic link to .* outside"),
    ("linkdir/outside.bin", "symbolic link to .* outside"),
    ("missing.bin", "does not exist"),
    ("fifo", "not a regular file"),
    (".", "not a regular file"),
])
def test_external_data_escaping_the_folder_is_refused(external_model, location, words):
    folder = external_model.parent
    (folder / "link.bin").symlink_to(folder.parent / "outside.bin")
    (folder / "linkdir").symlink_to(folder.parent)
    os.mkfifo(folder / "fifo")
    if location == "ABSOLUTE":
        location = str(folder.parent / "outside.bin")
    with pytest.raises(ModelLoadError, match=words):
        onnx_cam.Explainer(relocate(external_model, location))


def test_external_data_extent_must_fit_the_file(external_model):
    proto = onnx.load(external_model, load_external_data=False)
    tensor = next(t for t in safety.model_tensors(proto) if t.external_data)
    for entry in tensor.external_data:
        if entry.key == "offset":
            entry.value = str(10**9)
    path = external_model.with_name("evil.onnx")
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelLoadError, match="beyond the file's"):
        onnx_cam.Explainer(path)


def test_nothing_outside_the_folder_is_even_opened(external_model):
    """A FIFO outside the folder blocks whoever opens it for reading: every escaping
    reference must be refused without opening it (run in a subprocess with a time bound)."""
    folder = external_model.parent
    os.mkfifo(folder.parent / "trap")
    (folder / "trap_link").symlink_to(folder.parent / "trap")
    paths = [relocate(external_model, loc).rename(folder / f"evil{i}.onnx")
             for i, loc in enumerate(["../trap", str(folder.parent / "trap"), "trap_link"])]
    code = textwrap.dedent(f"""
        import onnx_cam
        for path in {[str(p) for p in paths]!r}:
            try:
                onnx_cam.Explainer(path)
            except onnx_cam.ModelLoadError:
                print("refused")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.stdout.split() == ["refused"] * 3, done.stderr


def test_bytes_with_external_data_are_refused_not_read_from_the_cwd(external_model,
                                                                    monkeypatch):
    monkeypatch.chdir(external_model.parent)  # weights.bin is right here
    data = onnx.load(external_model, load_external_data=False).SerializeToString()
    with pytest.raises(ModelLoadError, match="no folder to read it from.*path"):
        onnx_cam.Explainer(data)
    with pytest.raises(ModelLoadError, match="no folder to read it from"):
        onnx_cam.Explainer(onnx.load_from_string(data))


# ---- sizes -----------------------------------------------------------------------------------
def test_model_file_over_2_gib_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as handle:  # sparse: takes no disk space
        handle.truncate(2**31)
    with pytest.raises(ModelLoadError, match="2 GiB or more.*external data.*save_as_external"):
        onnx_cam.Explainer(path)


def test_model_over_the_protobuf_limit_once_loaded_is_refused(external_model, monkeypatch):
    """Weights loaded from external data can push the model past what protobuf serialises
    (sessions are built from bytes); the real limit is 2 GiB, lowered here."""
    monkeypatch.setattr(safety, "PROTOBUF_LIMIT", external_model.stat().st_size + 10)
    with pytest.raises(ModelLoadError, match="cannot serialise 2 GiB"):
        onnx_cam.Explainer(external_model)


# ---- refused before ONNX Runtime sees it ------------------------------------------------------
@pytest.fixture
def runtime_calls(monkeypatch):
    """Records every ONNX Runtime session made (ours or constant folding's), and makes none:
    a refused model must leave it empty."""
    calls = []

    def record(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("no ONNX Runtime in this test")
    monkeypatch.setattr(onnxruntime, "InferenceSession", record)
    return calls


def conv_model(extra_nodes=(), extra_inits=(), out="y", length=10):
    w = numpy_helper.from_array(np.ones((3, 2, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             *extra_nodes,
             helper.make_node("ReduceMean", [out if out != "y" else "c"], ["y"], axes=[2],
                              keepdims=0)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, length])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w, *extra_inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def constant_sum(shape: list[int]):
    """A model adding sum(zeros(shape)) to its convolution: a subgraph constant folding
    evaluates in ONNX Runtime while the Explainer is built."""
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"]),
             helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
             helper.make_node("Add", ["c", "total"], ["s"])]
    return conv_model(nodes, [numpy_helper.from_array(np.array(shape, np.int64), "shape")],
                      out="s")


def test_a_sound_model_does_reach_the_runtime(runtime_calls):
    """The fixture's control: building an Explainer does run ONNX Runtime (constant
    folding), so the refusals below happen before it."""
    onnx_cam.Explainer(constant_sum([2, 2]))
    assert runtime_calls


def test_checker_failure_is_refused_before_the_runtime(runtime_calls):
    model = conv_model()
    model.graph.node[0].input[1] = "undefined_weight"
    with pytest.raises(ModelLoadError, match="checker rejects"):
        onnx_cam.Explainer(model)
    assert not runtime_calls


def test_contradicting_shapes_are_refused_before_the_runtime(runtime_calls):
    bias = numpy_helper.from_array(np.ones((1, 3, 7), np.float32), "b")  # conv gives (N, 3, 8)
    model = conv_model([helper.make_node("Add", ["c", "b"], ["s"])], [bias], out="s")
    onnx.checker.check_model(model)  # the checker alone lets it through
    with pytest.raises(UnsupportedModelError, match="shape inference rejects"):
        onnx_cam.Explainer(model)
    assert not runtime_calls


def test_huge_constant_is_refused_before_the_runtime(runtime_calls):
    """ConstantOfShape would make constant folding allocate 40 GB in ONNX Runtime."""
    with pytest.raises(onnx_cam.MemoryBudgetError, match="'big'.*37.3 GiB.*memory budget"):
        onnx_cam.Explainer(constant_sum([100_000, 100_000]), max_memory="1GB")
    assert not runtime_calls


def test_execution_provider_context_nodes_are_refused(runtime_calls):
    node = helper.make_node("EPContext", ["c"], ["e"], domain="com.microsoft", name="ctx",
                            ep_cache_context="/etc/passwd", embed_mode=0)
    model = conv_model([node], out="e")
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(UnsupportedModelError, match="EPContext node.*original"):
        onnx_cam.Explainer(model)
    assert not runtime_calls


# ---- arrays are never unpickled -------------------------------------------------------------
class _Trap:
    """Unpickling this creates the file named: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_pickled_arrays_never_run_code(cnn1d, tmp_path):
    sentinel = tmp_path / "code_ran"
    model = tmp_path / "model.onnx"
    model.write_bytes(cnn1d[2])
    payload = np.array([_Trap(str(sentinel))], dtype=object)
    np.save(tmp_path / "x.npy", payload, allow_pickle=True)
    np.savez(tmp_path / "x.npz", a=payload, allow_pickle=True)
    with open(tmp_path / "raw.npy", "wb") as handle:  # not even an .npy: a bare pickle
        pickle.dump(_Trap(str(sentinel)), handle)
    for name in ("x.npy", "x.npz", "raw.npy"):
        assert main(["explain", str(model), str(tmp_path / name), "--out",
                     str(tmp_path / "out"), "--quiet"]) == 2
        with pytest.raises(onnx_cam.OnnxCamError):
            onnx_cam.Explanation.load(tmp_path / name)
    assert not sentinel.exists()
    assert not (tmp_path / "out" / "cams.npz").exists()


def _calls(tree: ast.AST, name: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == name:
            yield node


def _keyword(call: ast.Call, name: str):
    value = next((k.value for k in call.keywords if k.arg == name), None)
    return value.value if isinstance(value, ast.Constant) else None


def test_every_loader_in_the_package_refuses_pickles():
    """Static guard: np.load / torch.load calls say allow_pickle=False / weights_only=True,
    no Keras load_model turns safe_mode off, and nothing imports pickle, marshal, dill or
    joblib."""
    sources = [p for d in ("onnx_cam", "kernels", "converters") for p in (ROOT / d).rglob("*.py")]
    assert len(sources) > 20
    for path in sources:
        tree = ast.parse(path.read_text(), str(path))
        for call in _calls(tree, "load"):
            owner = ast.unparse(call.func.value)
            if owner in ("np", "numpy"):
                assert _keyword(call, "allow_pickle") is False, f"{path}:{call.lineno}"
            if owner == "torch":
                assert _keyword(call, "weights_only") is True, f"{path}:{call.lineno}"
        for call in _calls(tree, "load_model"):
            assert _keyword(call, "safe_mode") is not False, f"{path}:{call.lineno}"
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                    for a in n.names}
        imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
                     if isinstance(n, ast.ImportFrom)}
        assert not imported & {"pickle", "marshal", "dill", "joblib", "shelve"}, path
