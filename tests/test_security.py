"""Untrusted model and data files: loading never executes code, never reads outside what was
named, and refuses what ONNX Runtime should not see (onnx_cam.safety)."""

from __future__ import annotations

import ast
import os
import pathlib
import pickle
import re
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime
import pytest
from conftest import peak_in_subprocess
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
    with pytest.raises(onnx_cam.MemoryBudgetError, match="'big'.*37.25 GiB.*memory budget"):
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
    """Static guard: np.load / np.lib.format.read_array / torch.load calls say
    allow_pickle=False / weights_only=True,
    no Keras load_model turns safe_mode off, and nothing imports pickle, marshal, dill or
    joblib."""
    sources = [p for d in ("onnx_cam", "kernels", "converters") for p in (ROOT / d).rglob("*.py")]
    assert len(sources) > 20
    for path in sources:
        tree = ast.parse(path.read_text(), str(path))
        for call in [*_calls(tree, "load"), *_calls(tree, "read_array")]:
            owner = ast.unparse(call.func.value)
            if owner.split(".")[0] in ("np", "numpy"):
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


# ---- external data anywhere: function attribute defaults, training_info -------------------------
def external_tensor(name: str, location: str, values: np.ndarray) -> TensorProto:
    """A float tensor whose data lies in `location` (as written by np.ndarray.tofile)."""
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=values.shape)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"),
                       ("length", str(values.nbytes))):
        tensor.external_data.add(key=key, value=value)
    return tensor


def shifted_model(secret: TensorProto):
    """conv_model fed x + secret, where `secret` (shape (10,)) is the attribute default of a
    local function: off the path a CAM differentiates, so the model explains."""
    constant = helper.make_node("Constant", [], ["k"])
    constant.attribute.add(name="value", ref_attr_name="secret", type=onnx.AttributeProto.TENSOR)
    shift = helper.make_function(
        "local", "Shift", ["x"], ["y"], [constant, helper.make_node("Add", ["x", "k"], ["y"])],
        [helper.make_opsetid("", 17)], attribute_protos=[helper.make_attribute("secret", secret)])
    model = conv_model()
    model.graph.node[0].input[0] = "shifted"
    model.graph.node.insert(0, helper.make_node("Shift", ["x"], ["shifted"], domain="local"))
    model.functions.append(shift)
    model.opset_import.append(helper.make_opsetid("local", 1))
    return model


SECRET = np.arange(10, dtype=np.float32) * 100


def test_a_function_default_with_external_data_is_refused_as_bytes(tmp_path, monkeypatch):
    """The attack: ONNX Runtime resolved the default against the working directory, and the
    file's bytes reached the logits."""
    monkeypatch.chdir(tmp_path)
    SECRET.tofile(tmp_path / "secret.bin")
    model = shifted_model(external_tensor("secret", "secret.bin", SECRET))
    for given in (model, model.SerializeToString()):
        with pytest.raises(ModelLoadError, match="'secret'.*no folder to read it from.*path"):
            onnx_cam.Explainer(given)


def test_a_function_default_reads_only_inside_the_model_folder(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    SECRET.tofile(tmp_path / "secret.bin")  # in the working directory, not the model's folder
    for location, words in [("secret.bin", "does not exist"), ("../secret.bin", "outside")]:
        path = folder / "shifted.onnx"
        onnx.save(shifted_model(external_tensor("secret", location, SECRET)), path)
        with pytest.raises(ModelLoadError, match=words):
            onnx_cam.Explainer(path)
    SECRET.tofile(folder / "secret.bin")  # beside the model: read, and used as the values
    onnx.save(shifted_model(external_tensor("secret", "secret.bin", SECRET)), path)
    x = np.random.default_rng(0).standard_normal((2, 2, 10)).astype(np.float32)
    inline = onnx_cam.Explainer(shifted_model(numpy_helper.from_array(SECRET, "secret")))
    np.testing.assert_array_equal(onnx_cam.Explainer(path).explain(x).logits,
                                  inline.explain(x).logits)


def with_training_info(model, initializer: TensorProto, where: str):
    info = model.training_info.add()
    graph = info.initialization if where == "initialization" else info.algorithm
    graph.name = where
    graph.initializer.append(initializer)
    return model


@pytest.mark.parametrize("where", ["initialization", "algorithm"])
def test_training_info_external_data_is_checked_like_the_graph(where, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    SECRET.tofile(tmp_path / "secret.bin")
    model = with_training_info(conv_model(), external_tensor("t", "secret.bin", SECRET), where)
    with pytest.raises(ModelLoadError, match="'t'.*no folder to read it from"):
        onnx_cam.Explainer(model.SerializeToString())
    onnx.save(with_training_info(conv_model(), external_tensor("t", "../secret.bin", SECRET),
                                 where), folder / "outside.onnx")
    with pytest.raises(ModelLoadError, match="'t'.*outside the model's folder"):
        onnx_cam.Explainer(folder / "outside.onnx")
    SECRET.tofile(folder / "secret.bin")
    onnx.save(model, folder / "inside.onnx")
    loaded = onnx_cam.Explainer(folder / "inside.onnx").model.proto
    tensor = next(t for t in safety.model_tensors(loaded) if t.name == "t")
    np.testing.assert_array_equal(numpy_helper.to_array(tensor), SECRET)


def test_the_walker_finds_a_tensor_wherever_onnx_lets_it_sit():
    """One tensor in each place the ONNX format allows one; model_tensors must list all."""
    def t(name):
        return numpy_helper.from_array(np.zeros(2, np.float32), name)

    def sparse(name):
        return helper.make_sparse_tensor(t(f"{name}.values"), numpy_helper.from_array(
            np.array([0, 1], np.int64), f"{name}.indices"), [4])

    inner = helper.make_graph([helper.make_node("Constant", [], ["c"], value=t("in_if_attr"))],
                              "then", [], [], [t("in_if_init")])
    body = helper.make_graph([helper.make_node("If", ["cond"], [], then_branch=inner,
                                               else_branch=inner)], "body", [], [],
                             [t("in_loop_init")])
    nodes = [helper.make_node("Loop", ["", ""], [], body=body),
             helper.make_node("Op", [], [], tensors=[t("tensors_attr")],
                              sparse=sparse("sparse_attr"))]
    nodes[1].attribute.append(helper.make_attribute("sparses", [sparse("sparses_attr")]))
    graph = helper.make_graph(nodes, "g", [], [], [t("init")], sparse_initializer=[sparse("si")])
    function = helper.make_function(
        "f", "F", [], [], [helper.make_node("Constant", [], ["k"], value=t("in_function"))], [],
        attribute_protos=[helper.make_attribute("default", t("function_default")),
                          helper.make_attribute("graph_default", helper.make_graph(
                              [], "d", [], [], [t("in_default_graph")]))])
    model = helper.make_model(graph, functions=[function])
    info = model.training_info.add()
    info.initialization.CopyFrom(helper.make_graph([], "i", [], [], [t("training_init")]))
    info.algorithm.CopyFrom(helper.make_graph([], "a", [], [], [t("training_algorithm")]))
    found = {tensor.name for tensor in safety.model_tensors(model)}
    assert found == {
        "init", "si.values", "si.indices", "in_loop_init", "in_if_init", "in_if_attr",
        "tensors_attr", "sparse_attr.values", "sparse_attr.indices", "sparses_attr.values",
        "sparses_attr.indices", "in_function", "function_default", "in_default_graph",
        "training_init", "training_algorithm"}
    assert {g.name for g in safety.model_graphs(model)} == {"g", "body", "then", "d", "i", "a"}


# ---- hostile attributes and metadata ------------------------------------------------------------
def layer_model(op: str, attribute: str, opset: int):
    """conv_model with one more `op` node after its convolution, whose `attribute` is an empty
    list (as a fuzzer or a hand-edited file leaves it)."""
    inits, inputs = [], ["c"]
    if op in ("Conv", "ConvTranspose"):
        inits = [numpy_helper.from_array(np.ones((3, 3, 3), np.float32), "w2")]
        inputs.append("w2")
    node = helper.make_node(op, inputs, ["h"], name="hostile")
    if op.endswith("Pool") and attribute != "kernel_shape":
        node.attribute.append(helper.make_attribute("kernel_shape", [2]))
    node.attribute.append(helper.make_attribute(attribute, [], attr_type=onnx.AttributeProto.INTS))
    model = conv_model([node], inits, out="h")
    model.opset_import[0].version = opset
    return model


@pytest.mark.parametrize("opset", [17, 11])
@pytest.mark.parametrize("op, attribute", [
    ("Conv", "pads"), ("Conv", "strides"), ("Conv", "dilations"), ("Conv", "kernel_shape"),
    ("ConvTranspose", "pads"), ("ConvTranspose", "output_padding"),
    ("ConvTranspose", "output_shape"), ("MaxPool", "strides"), ("AveragePool", "pads"),
    ("MaxPool", "kernel_shape")])
def test_empty_attribute_lists_are_refused_with_the_fix(op, attribute, opset, runtime_calls):
    """They reached onnx-graphsurgeon, which raised a raw ValueError writing them back."""
    with pytest.raises(ModelLoadError, match=f"'hostile' \\({op}\\).*empty list.*{attribute}"
                                             ".*Re-export"):
        onnx_cam.Explainer(layer_model(op, attribute, opset))
    assert not runtime_calls


def with_metadata(key: str, value: str):
    model = conv_model()
    model.metadata_props.add(key=key, value=value)
    return model


@pytest.mark.parametrize("key, value", [
    ("onnx_cam.class_names", "not json"), ("onnx_cam.class_names", "3"),
    ("onnx_cam.class_names", "null"), ("onnx_cam.class_names", '{"a": "b"}'),
    ("onnx_cam.class_names", "[1, 2, 3]"), ("onnx_cam.class_names", ""),
    ("onnx_cam.class_names", "[" * 100_000), ("onnx_cam.layer_map", "[]"),
    ("onnx_cam.layer_map", "null"), ("onnx_cam.layer_map", '"conv"'),
    ("onnx_cam.layer_map", '{"conv": 3}'), ("onnx_cam.layer_map", "{'conv': 'c'}")])
def test_malformed_metadata_is_refused_naming_the_key(key, value):
    with pytest.raises(ModelLoadError, match=f"metadata entry '{key}'.*Re-export.*remove the "
                                             "entry"):
        onnx_cam.Explainer(with_metadata(key, value))


def test_wellformed_metadata_is_used():
    model = with_metadata("onnx_cam.class_names", '["a", "b", "c"]')
    model.metadata_props.add(key="onnx_cam.layer_map", value='{"features": "c"}')
    exp = onnx_cam.Explainer(model)
    assert exp.class_names == ["a", "b", "c"]
    assert exp.model.resolve_layer("features").tensor == "c"


# ---- computed tensors count against the budget --------------------------------------------
def bomb(kind: str):
    """conv_model plus a tensor whose shape the graph computes from constants (a 400 MB
    ConstantOfShape) or from the input's own shape (a Range of 3 million int64, 24 MB):
    shape inference alone does not know their size."""
    def const(name, value):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
            np.array(value, np.int64)))

    def used(tensor):  # ReduceSum of it added to the convolution's output
        return [helper.make_node("ReduceSum", [tensor], ["total"], keepdims=0),
                helper.make_node("Add", ["c", "total"], ["s"])]

    if kind == "ConstantOfShape":  # shape = ReduceProd([10_000, 10_000]), which inference skips
        nodes = [const("factors", [10_000, 10_000]),
                 helper.make_node("ReduceProd", ["factors"], ["n"], keepdims=1),
                 helper.make_node("ConstantOfShape", ["n"], ["big"]), *used("big")]
    else:  # Range(0, length * 300_000) where length = Shape(x)[2] = 10
        nodes = [helper.make_node("Shape", ["x"], ["xs"], start=2),
                 const("scale", [300_000]), helper.make_node("Mul", ["xs", "scale"], ["top"]),
                 helper.make_node("Squeeze", ["top"], ["limit"]),
                 const("zero", 0), const("one", 1),
                 helper.make_node("Range", ["zero", "limit", "one"], ["ramp"]),
                 helper.make_node("Cast", ["ramp"], ["big"], to=TensorProto.FLOAT), *used("big")]
    return conv_model(nodes, out="s")


@pytest.mark.parametrize("kind, words", [
    ("ConstantOfShape", "'big'.*0.37 GiB for one item.*budget of 0.09 GiB"),
    ("Range", "'ramp'.*0.42 GiB \\(3000000 integers, which ONNX shape inference holds at "
              "about 150 bytes each\\) for one item.*budget of 0.09 GiB")])
def test_computed_tensors_are_refused_before_anything_allocates_them(kind, words, tmp_path):
    """Under a 100 MB budget: refused with the tensor named, the peak memory staying low.
    Before, the ConstantOfShape ran (ONNX Runtime allocated it), and ONNX's data propagation
    held the Range's 3 million values (24 MB as int64) as protobuf messages (0.4 GB; 14 GB
    for 100 million)."""
    model = bomb(kind)
    assert model.ByteSize() < 1000
    onnx.save(model, tmp_path / "bomb.onnx")
    result = peak_in_subprocess("import onnx_cam",
                                f"onnx_cam.Explainer({str(tmp_path / 'bomb.onnx')!r})",
                                "onnx_cam.MemoryBudgetError", "100MB")
    assert result["message"] is not None and re.search(words, result["message"]), result
    assert result["added"] < 60 * 2**20, result


def test_an_input_of_undefined_type_is_refused():
    """Fuzz finding: element type 0 (UNDEFINED) passes the checker; reading the input's
    dtype raised a raw KeyError."""
    model = conv_model()
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.UNDEFINED
    with pytest.raises(UnsupportedModelError, match="'x' is a tensor_type of element type 0"):
        onnx_cam.Explainer(model)


def test_a_model_without_outputs_is_refused():
    """Fuzz finding: a graph with no output passes the checker; picking the default output
    raised a raw IndexError."""
    model = conv_model()
    del model.graph.output[:]
    with pytest.raises(UnsupportedModelError, match="declares no output"):
        onnx_cam.Explainer(model)
