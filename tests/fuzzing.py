"""Fuzzing onnx-cam with hypothesis: mutated ONNX models, .npy / .npz files, images, CSV
signals and explain() arguments, each fed to a worker subprocess.

Shared by tests/test_fuzz.py (a bounded run in CI) and scripts/fuzz.py (the longer
campaign). The worker runs one case at a time and reports its outcome; the only outcomes
allowed are

- ``ok``: a result (checked: maps in [0, 1] or NaN on a flagged row; the CLI's files whole),
- ``error``: an OnnxCamError with a message (the CLI: exit code 2 and "onnx-cam: error: ..."),

and the others are findings: ``bug`` (any other exception, or a result breaking a check),
``crash`` (the worker died: a segfault or abort in native code), ``hang`` (no answer within
the time bound) and ``partial`` (a failed CLI run left a file where a result was expected).

    python tests/fuzzing.py --worker        # the worker: JSON cases in, outcomes out
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = ("ok", "error")
CASE_SECONDS = 60.0  # a case taking longer is a hang


# ---- seeds: small valid models and inputs, built without torch --------------------------------
def seed_model(dims: int, channels: int) -> bytes:
    """Conv -> Relu -> MaxPool -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm ->
    Softmax on (N, channels, 32) or (N, channels, 16, 16) inputs, fixed random weights."""
    rng = np.random.default_rng(dims)
    spatial = [32] if dims == 1 else [16, 16]
    kernel = [3] * dims

    def init(name, shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    inits = [init("w1", [4, channels, *kernel]), init("b1", [4]), init("w2", [4, 4, *kernel]),
             init("b2", [4]), init("w3", [3, 4]), init("b3", [3])]
    pads = [1] * (2 * dims)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=pads),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2] * dims,
                         strides=[2] * dims),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=pads),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["output"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "seed", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                      ["N", channels, *spatial])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def seed_inputs() -> dict[str, bytes]:
    """Valid input files for the seed models: arrays for the 1D model, a PNG and a JPEG
    for the 2D (RGB) one, a CSV signal (2 channels) for the 1D one."""
    from PIL import Image

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 32)).astype(np.float32)
    npy, npz = io.BytesIO(), io.BytesIO()
    np.save(npy, x)
    np.savez(npz, a=x[:2], b=x[2:])
    pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    png, jpeg = io.BytesIO(), io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    Image.fromarray(pixels).save(jpeg, format="JPEG")
    csv = "lead_a,lead_b\n" + "".join(f"{a:.4f},{b:.4f}\n" for a, b in x[0].T)
    return {"npy": npy.getvalue(), "npz": npz.getvalue(), "png": png.getvalue(),
            "jpeg": jpeg.getvalue(), "csv": csv.encode()}


def image_contents() -> dict[str, bytes]:
    """One small image in every format this Pillow writes (the allowed ones and others,
    EPS among them), to be given a PNG / JPEG / BMP / TIFF name and mutated."""
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16, 3),
                                                              dtype=np.uint8))
    found = {"EPS-text": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n"}
    for fmt in ("PNG", "JPEG", "BMP", "TIFF", "GIF", "ICO", "PPM", "PCX", "TGA", "SGI", "WEBP",
                "IM", "DDS", "EPS", "MSP", "XBM", "BLP", "QOI", "JPEG2000", "SPIDER"):
        buffer = io.BytesIO()
        try:
            mode = {"MSP": "1", "XBM": "1", "SPIDER": "F"}.get(fmt, "RGB")
            image.convert(mode).save(buffer, format=fmt)
        except Exception:  # a format this Pillow cannot write
            continue
        found[fmt] = buffer.getvalue()
    return found


# ---- mutations ------------------------------------------------------------------------------
def mutate_bytes(data: bytes, ops: list[tuple]) -> bytes:
    """Apply byte-level edits: ("flip", pos, xor), ("cut", pos), ("insert", pos, bytes),
    ("delete", pos, n), ("put", pos, bytes) with positions taken modulo the length."""
    out = bytearray(data)
    for op in ops:
        n = max(len(out), 1)
        kind, pos = op[0], op[1] % n
        if kind == "flip" and out:
            out[pos] ^= op[2] or 1
        elif kind == "cut":
            del out[pos:]
        elif kind == "insert":
            out[pos:pos] = op[2]
        elif kind == "delete":
            del out[pos:pos + op[2]]
        elif kind == "put":
            out[pos:pos + len(op[2])] = op[2]
    return bytes(out)


OPS = ["Conv", "Relu", "MaxPool", "AveragePool", "Gemm", "Softmax", "Flatten", "Reshape",
       "Add", "Mul", "Div", "Sqrt", "Log", "Concat", "Slice", "Transpose", "Identity", "LSTM",
       "Loop", "If", "Scan", "ConstantOfShape", "Expand", "Tile", "Resize", "NonExistentOp",
       "Pad", "Gather", "ReduceMean", "Sigmoid", "BatchNormalization", "ConvTranspose"]


def mutate_model(data: bytes, ops: list[tuple]) -> bytes:
    """Structure-aware edits of a ModelProto (then serialised): change an op, attribute,
    dimension, data type, opset, an initializer's shape or data, rewire or drop a node,
    point weights at external data."""
    model = onnx.load_from_string(data)
    graph = model.graph
    for op in ops:
        kind, a, b = op
        nodes, inits = graph.node, graph.initializer
        if kind == "op" and nodes:
            nodes[a % len(nodes)].op_type = OPS[b % len(OPS)]
        elif kind == "attr" and nodes:
            node = nodes[a % len(nodes)]
            if node.attribute:
                attr = node.attribute[b % len(node.attribute)]
                if attr.ints:
                    attr.ints[b % len(attr.ints)] = b - 2**15
                elif attr.type == onnx.AttributeProto.INT:
                    attr.i = b - 2**15
                elif attr.type == onnx.AttributeProto.FLOAT:
                    attr.f = float(b - 2**15) / 7
            else:
                node.attribute.append(helper.make_attribute("axis", b - 4))
        elif kind == "dim":
            values = [*graph.input, *graph.output]
            dims = values[a % len(values)].type.tensor_type.shape.dim
            if dims:
                dim = dims[b % len(dims)]
                dim.Clear()
                choice = [0, 1, 2**31, -3, 10**9, None][b % 6]
                if choice is None:
                    dim.dim_param = "free"
                else:
                    dim.dim_value = choice
        elif kind == "dtype" and inits:
            inits[a % len(inits)].data_type = b % 22
        elif kind == "shape" and inits:
            init = inits[a % len(inits)]
            if init.dims:
                init.dims[b % len(init.dims)] = [0, 1, 3, 10**6, 2**40][b % 5]
        elif kind == "data" and inits:
            init = inits[a % len(inits)]
            init.raw_data = init.raw_data[: b % (len(init.raw_data) + 1)]
        elif kind == "opset":
            model.opset_import[0].version = b % 30
        elif kind == "ir":
            model.ir_version = b % 14
        elif kind == "input" and nodes:
            node = nodes[a % len(nodes)]
            if node.input:
                node.input[b % len(node.input)] = ["input", "c1", "w1", "", "missing",
                                                   "output"][b % 6]
        elif kind == "drop" and nodes:
            del nodes[a % len(nodes)]
        elif kind == "swap" and len(nodes) > 1:
            i, j = a % len(nodes), b % len(nodes)
            first, second = onnx.NodeProto(), onnx.NodeProto()
            first.CopyFrom(nodes[i])
            second.CopyFrom(nodes[j])
            nodes[i].CopyFrom(second)
            nodes[j].CopyFrom(first)
        elif kind == "external" and inits:
            init = inits[a % len(inits)]
            init.ClearField("raw_data")
            init.data_location = TensorProto.EXTERNAL
            del init.external_data[:]
            entry = init.external_data.add()
            entry.key, entry.value = "location", ["../secret.bin", "/etc/hostname",
                                                  "weights.bin", "", "a/../../b"][b % 5]
        elif kind == "output" and graph.output:
            graph.output[0].name = ["c1", "r2", "g", "missing", "input"][b % 5]
    return model.SerializeToString()


MODEL_MUTATIONS = ["op", "attr", "dim", "dtype", "shape", "data", "opset", "ir", "input",
                   "drop", "swap", "external", "output"]


@st.composite
def byte_ops(draw, max_ops: int = 4, head: int | None = None):
    """Byte edits, at positions below `head` when given (e.g. an .npy header)."""
    position = st.integers(0, (head or 2**16) - 1)
    op = st.one_of(
        st.tuples(st.just("flip"), position, st.integers(1, 255)),
        st.tuples(st.just("cut"), position),
        st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), position, st.integers(1, 64)),
        st.tuples(st.just("put"), position, st.sampled_from(_TOKENS)),
    )
    return draw(st.lists(op, min_size=1, max_size=max_ops))


# strings that matter to the parsers: npy header fields, PNG chunk names, CSV cells
_TOKENS = [b"'descr': '|O'", b"'descr': '>f8'", b"'descr': '<c8'", b"'descr': '|V8'",
           b"'shape': (1000000000000,)", b"'shape': (-1, 2)", b"'shape': ()", b"True",
           b"'fortran_order': True", b"\x93NUMPY\x03\x00", b"\xff\xff\xff\x7f", b"IHDR",
           b"\x00\x00\xff\xff\x00\x00\xff\xff", b"IDAT", b"IEND", b"nan", b"inf", b"1e999",
           b",,,,", b"\n\n", b"\xef\xbb\xbf", b"\x00", b"PK\x03\x04", b"-0", b"1" * 40]


@st.composite
def model_ops(draw, max_ops: int = 3):
    kind = st.sampled_from(MODEL_MUTATIONS)
    return draw(st.lists(st.tuples(kind, st.integers(0, 64), st.integers(0, 2**16)),
                         min_size=1, max_size=max_ops))


@st.composite
def explain_arguments(draw):
    """explain() arguments, adversarial ones included, as JSON-able values."""
    cls = st.one_of(st.integers(-4, 5), st.sampled_from(["cat", "", "top2", "top0", "top99",
                                                         "all", "pred"]))
    # each argument is left at its default half of the time, so that some calls succeed
    return draw(st.fixed_dictionaries({}, optional={
        "targets": st.one_of(st.none(), cls, st.lists(st.one_of(cls, st.lists(cls)),
                                                      max_size=4)),
        "foils": st.one_of(st.none(), st.integers(-1, 3)),
        "layers": st.one_of(st.just("auto"), st.sampled_from(
            ["c1", "r2", "conv2", "p1", "g", "output", "", "nope"]),
            st.lists(st.sampled_from(["auto", "r1", "c2", "logits"]), max_size=3)),
        "methods": st.one_of(st.sampled_from(["gradcam", "hirescam", "scorecam", "eigencam",
                                              "bogus"]),
                             st.lists(st.sampled_from(["gradcam++", "xgradcam", "ablationcam",
                                                       "layercam"]), max_size=3)),
        "score": st.sampled_from(["logits", "log_probs", "probs", "softmax"]),
        "batch_size": st.integers(-2, 70),
        "eigen_smooth": st.booleans(),
        "nonfinite": st.sampled_from(["raise", "flag", "zero"]),
    }))


@st.composite
def input_arrays(draw):
    """Arrays of odd dtypes, shapes and values for the 1D seed model (2 channels, 32)."""
    dtype = draw(st.sampled_from(["float32", "float64", "float16", "int8", "uint8", "int64",
                                  "bool", "complex64"]))
    shape = draw(st.one_of(
        st.just([draw(st.integers(0, 4)), 2, 32]),
        st.lists(st.integers(0, 40), min_size=0, max_size=5)))
    size = int(np.prod(shape)) if shape else 1
    special = draw(st.lists(st.tuples(st.integers(0, max(size - 1, 0)), st.sampled_from(
        [float("nan"), float("inf"), -float("inf"), 3e38, -3e38, 1e-45, 0.0])), max_size=3))
    return {"dtype": dtype, "shape": shape, "special": special, "seed": draw(st.integers(0, 99))}


odd_inputs = st.one_of(
    st.none(), st.text(max_size=8), st.integers(), st.booleans(),
    st.lists(st.lists(st.floats(width=32), max_size=3), max_size=3),  # ragged, NaN, Inf
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def make_array(spec: dict) -> np.ndarray:
    rng = np.random.default_rng(spec["seed"])
    size = int(np.prod(spec["shape"])) if spec["shape"] else 1
    values = rng.standard_normal(size)
    for index, value in spec["special"]:
        if index < size:
            values[index] = value
    with np.errstate(all="ignore"):
        return values.astype(spec["dtype"]).reshape(spec["shape"])


# ---- the worker (runs in its own process) ------------------------------------------------------
def _check_explanation(res) -> None:
    """A result must keep its promises: maps in [0, 1], NaN only on a flagged row."""
    for key, cam in res.cams.items():
        flat = cam.reshape(len(cam), -1)
        nan_rows = np.isnan(flat).any(axis=1)
        if (nan_rows & (res.flags == 0)).any():
            raise AssertionError(f"{key}: unflagged rows {np.flatnonzero(nan_rows)} hold NaN")
        finite = flat[~nan_rows]
        if finite.size and (finite.min() < 0 or finite.max() > 1):
            raise AssertionError(f"{key}: values outside [0, 1]")


def _run_model(case: dict, state: dict):
    import onnx_cam

    exp = onnx_cam.Explainer(case["path"], max_memory=case.get("max_memory"))
    spatial = [d if isinstance(d, int) and 0 < d <= 64 else 16
               for d in exp.model.input_shape[1:]]
    x = np.random.default_rng(0).standard_normal((2, *spatial)).astype(np.float32)
    _check_explanation(exp.explain(x, methods=["gradcam", "hirescam"]))


def _run_explain(case: dict, state: dict):
    import onnx_cam

    if "explainer" not in state:
        state["explainer"] = onnx_cam.Explainer(case["model"])
    x = make_array(case["array"]) if "array" in case else case["value"]  # e.g. a string
    _check_explanation(state["explainer"].explain(x, **case["arguments"]))


def _run_cli(case: dict, state: dict):
    """onnx-cam explain: exit 0 with whole result files, or 2 with a message and no file."""
    from contextlib import redirect_stderr

    import onnx_cam
    from onnx_cam.cli import main

    out = Path(case["out"])
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(["explain", case["model"], *case["inputs"], "--out", str(out), "--quiet",
                     *case.get("options", [])])
    left = sorted(p.name for p in out.glob("*")) if out.exists() else []
    if code == 0:
        onnx_cam.Explanation.load(out / "cams.npz")
        json.loads((out / "summary.json").read_text())
        if left != ["cams.npz", "summary.json"]:
            raise AssertionError(f"files left: {left}")
        return "ok", ""
    message = err.getvalue().strip()
    if code != 2 or not message.startswith("onnx-cam: error:") or "Traceback" in message:
        return "bug", f"exit {code}: {message[-2000:]}"
    if left:
        return "partial", f"exit 2 left {left}: {message}"
    return "error", message


def _run_audit(case: dict, state: dict):
    """onnx-cam audit over a folder holding one mutated file: exit 0 with a complete store
    that records every item (the mutated one as a result or as failed with a reason), or
    exit 2 with a message."""
    from contextlib import redirect_stderr

    from onnx_cam.audit import AuditStore
    from onnx_cam.cli import main

    err = io.StringIO()
    with redirect_stderr(err):
        code = main(["audit", case["model"], case["folder"], "--store", case["store"],
                     "--chunk-items", "2", "--quiet"])
    if code == 0:
        store = AuditStore(case["store"])
        failed = store["failed"][:]
        if not store.complete or len(store) != case["items"]:
            raise AssertionError(f"store incomplete: {store}")
        if any(not str(store["error"][i]) for i in np.flatnonzero(failed)):
            raise AssertionError("a failed item without a reason")
        if failed[:-1].any():
            raise AssertionError("a valid item was recorded as failed")
        return "ok", ""
    message = err.getvalue().strip()
    if code != 2 or not message.startswith("onnx-cam: error:") or "Traceback" in message:
        return "bug", f"exit {code}: {message[-2000:]}"
    return "error", message


TARGETS = {"model": _run_model, "explain": _run_explain, "cli": _run_cli, "audit": _run_audit}


def worker() -> None:
    """Read one JSON case per line on stdin; write one JSON outcome per line on stdout."""
    import onnx_cam

    state: dict = {}
    for line in sys.stdin:
        case = json.loads(line)
        try:
            result = TARGETS[case["target"]](case, state)
            outcome, detail = result if result else ("ok", "")
        except onnx_cam.OnnxCamError as exc:
            outcome, detail = ("error", str(exc)) if str(exc).strip() else ("bug", "no message")
        except Exception:
            outcome, detail = "bug", traceback.format_exc()[-3000:]
        print(json.dumps({"outcome": outcome, "detail": detail}), flush=True)


# ---- the parent side ----------------------------------------------------------------------------
@dataclass
class Tally:
    """What a fuzz run tried and found."""

    tried: int = 0
    outcomes: dict = field(default_factory=dict)
    findings: list = field(default_factory=list)  # (target, outcome, detail, saved input)

    @staticmethod
    def headline(detail: str) -> str:
        """The line of a detail that names the exception."""
        lines = [line for line in detail.strip().splitlines()
                 if line.strip() and not line.startswith((" ", "onnx-cam: internal error"))]
        return lines[-1][:200] if lines else detail[:200]

    def add(self, target: str, outcome: str, detail: str, saved: str | None) -> None:
        self.tried += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if outcome not in ALLOWED:
            self.findings.append((target, outcome, detail[-1500:], saved))


class Worker:
    """A worker subprocess, restarted after a crash or a hang."""

    def __init__(self, log: Path, seconds: float = CASE_SECONDS):
        self.seconds, self.log = seconds, log
        self.proc: subprocess.Popen | None = None
        self.env: dict[str, str] = {}  # more environment variables for the worker

    def _start(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), os.environ.get("PYTHONPATH", "")]), "PYTHONWARNINGS": "ignore",
            **self.env}
        with open(self.log, "a") as log:  # native crashes print here
            self.proc = subprocess.Popen([sys.executable, __file__, "--worker"], cwd=ROOT,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log, text=True, env=env)

    def run(self, case: dict) -> tuple[str, str]:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        proc = self.proc
        proc.stdin.write(json.dumps(case) + "\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], self.seconds)
        line = proc.stdout.readline() if ready else ""
        if line:
            result = json.loads(line)
            return result["outcome"], result["detail"]
        if proc.poll() is None:  # no answer in time: a hang
            proc.kill()
            proc.wait()
            self.proc = None
            return "hang", f"no outcome within {self.seconds:.0f} s"
        code = proc.wait()
        self.proc = None
        name = signal.Signals(-code).name if code < 0 else f"exit {code}"
        return "crash", f"worker died ({name})"

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        self.proc = None


class Campaign:
    """Turns drawn mutations into files and cases, runs them, records the outcomes."""

    def __init__(self, folder: Path, worker: Worker, findings: Path | None = None):
        self.folder, self.worker, self.tally = folder, worker, Tally()
        self.findings = findings
        self.models = {"1d": folder / "seed_1d.onnx", "2d": folder / "seed_2d.onnx"}
        self.models["1d"].write_bytes(seed_model(1, 2))
        self.models["2d"].write_bytes(seed_model(2, 3))
        self.inputs = seed_inputs()
        (folder / "secret.bin").write_bytes(b"\x00" * 64)
        self.images = image_contents()
        # a `gs` first on the worker's PATH: if any image made Pillow run Ghostscript, it
        # leaves a marker
        self.marker = folder / "gs_ran"
        (folder / "bin").mkdir()
        (folder / "bin" / "gs").write_text(f"#!/bin/sh\ntouch {self.marker}\n")
        (folder / "bin" / "gs").chmod(0o755)
        worker.env["PATH"] = f"{folder / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        self.count = 0

    def _file(self, name: str, data: bytes) -> Path:
        self.count += 1
        case_dir = self.folder / f"case{self.count}"
        case_dir.mkdir()
        path = case_dir / name
        path.write_bytes(data)
        return path

    def run(self, target: str, case: dict, saved: Path | None) -> str:
        outcome, detail = self.worker.run({"target": target, **case})
        if self.marker.exists():  # the case made something run the fake Ghostscript
            self.marker.unlink()
            outcome, detail = "bug", f"an external program (gs) ran; the outcome: {detail}"
        kept = None
        if outcome not in ALLOWED and self.findings is not None and saved is not None:
            self.findings.mkdir(parents=True, exist_ok=True)
            kept = self.findings / f"{target}_{outcome}_{self.count}{saved.suffix}"
            kept.write_bytes(saved.read_bytes())
        self.tally.add(target, outcome, detail, str(kept or saved))
        return outcome

    def model(self, ops: list, structural: bool) -> str:
        seed = self.models["1d"].read_bytes()
        data = mutate_model(seed, ops) if structural else mutate_bytes(seed, ops)
        path = self._file("model.onnx", data)
        return self.run("model", {"path": str(path)}, path)

    def file(self, kind: str, ops: list, head: bool = False) -> str:
        """A mutated input file through `onnx-cam explain` (the 2D model for images)."""
        data = mutate_bytes(self.inputs[kind], ops)
        path = self._file(f"input.{kind}", data)
        model = self.models["2d" if kind in ("png", "jpeg") else "1d"]
        case = {"model": str(model), "inputs": [str(path)], "out": str(path.parent / "out")}
        return self.run("cli", case, path)

    def image(self, fmt: str, suffix: str, ops: list) -> str:
        """An image of any format Pillow writes, named .png / .jpg / .bmp / .tif, byte-mutated,
        through `onnx-cam explain`; an external program run is a finding."""
        data = mutate_bytes(self.images[fmt], ops) if ops else self.images[fmt]
        path = self._file(f"input{suffix}", data)
        case = {"model": str(self.models["2d"]), "inputs": [str(path)],
                "out": str(path.parent / "out")}
        return self.run("cli", case, path)

    def metadata(self, entries: list[tuple[str, str]]) -> str:
        """The 1D seed model with onnx-cam metadata entries of any text."""
        model = onnx.load_from_string(self.models["1d"].read_bytes())
        for key, value in entries:
            model.metadata_props.add(key=key, value=value)
        path = self._file("model.onnx", model.SerializeToString())
        return self.run("model", {"path": str(path)}, path)

    def attributes(self, opset: int, edits: list[tuple[int, str, list]]) -> str:
        """The 1D seed model with its convolutions' and pool's spatial attributes set to any
        list of integers (empty, negative, huge, of the wrong length), or an op swapped for
        its transposed / other-pool twin, at opset 11 or 17."""
        model = onnx.load_from_string(self.models["1d"].read_bytes())
        model.opset_import[0].version = opset
        nodes = [n for n in model.graph.node if n.op_type in ("Conv", "MaxPool")]
        for which, name, values in edits:
            node = nodes[which % len(nodes)]
            if name == "op":
                node.op_type = {"Conv": "ConvTranspose", "MaxPool": "AveragePool"}.get(
                    node.op_type, node.op_type)
                continue
            kept = [a for a in node.attribute if a.name != name]
            del node.attribute[:]
            node.attribute.extend(kept)
            node.attribute.append(helper.make_attribute(
                name, values, attr_type=onnx.AttributeProto.INTS))
        path = self._file("model.onnx", model.SerializeToString())
        return self.run("model", {"path": str(path)}, path)

    def computed(self, op: str, sizes: list[int], budget: str) -> str:
        """The 1D seed model plus a tensor built by `op` (ConstantOfShape, Range, Expand,
        Tile) from constant shape arithmetic, summed into its logits, under a memory budget."""
        model = onnx.load_from_string(self.models["1d"].read_bytes())
        graph = model.graph
        factors = numpy_helper.from_array(np.array(sizes, np.int64), "factors")
        product = helper.make_node("ReduceProd", ["factors"], ["count"], keepdims=1)
        one = numpy_helper.from_array(np.ones(1, np.float32), "one")
        zero, step = (numpy_helper.from_array(np.array(v, np.int64), n)
                      for n, v in (("zero", 0), ("step", 1)))
        build = {
            "ConstantOfShape": [helper.make_node("ConstantOfShape", ["count"], ["big"])],
            "Expand": [helper.make_node("Expand", ["one", "count"], ["big"])],
            "Tile": [helper.make_node("Tile", ["one", "count"], ["big"])],
            "Range": [helper.make_node("Squeeze", ["count"], ["limit"]),
                      helper.make_node("Range", ["zero", "limit", "step"], ["ramp"]),
                      helper.make_node("Cast", ["ramp"], ["big"], to=TensorProto.FLOAT)],
        }[op]
        at = next(i for i, n in enumerate(graph.node) if n.op_type == "Gemm")
        graph.node[at].output[0] = "logits_before"
        for node in reversed([product, *build,
                              helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
                              helper.make_node("Add", ["logits_before", "total"], ["logits"])]):
            graph.node.insert(at + 1, node)
        graph.initializer.extend([factors, one, zero, step])
        path = self._file("model.onnx", model.SerializeToString())
        return self.run("model", {"path": str(path), "max_memory": budget}, path)

    def npz_member(self, ops: list) -> str:
        """An .npz whose zip is sound but whose member .npy is mutated (a flipped byte in
        a zip member is caught by the zip's CRC before numpy parses it)."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("a.npy", mutate_bytes(self.inputs["npy"], ops))
            archive.writestr("b.npy", self.inputs["npy"])
        path = self._file("input.npz", buffer.getvalue())
        case = {"model": str(self.models["1d"]), "inputs": [str(path)],
                "out": str(path.parent / "out")}
        return self.run("cli", case, path)

    def csv(self, how: str, value) -> str:
        """A CSV signal through `onnx-cam explain`: ("text", any text) or ("bytes", byte
        edits of a valid signal)."""
        if how == "text":
            data = value.encode("utf-8", "surrogatepass")
        else:
            data = mutate_bytes(self.inputs["csv"], value)
        path = self._file("input.csv", data)
        case = {"model": str(self.models["1d"]), "inputs": [str(path)],
                "out": str(path.parent / "out")}
        return self.run("cli", case, path)

    def audit(self, kind: str, ops: list) -> str:
        """onnx-cam audit on a folder of three valid one-item .npy files and, last in name
        order, one mutated .npy or CSV item."""
        valid = np.load(io.BytesIO(self.inputs["npy"]))
        single = io.BytesIO()
        np.save(single, valid[0])
        seed = {"npy": single.getvalue(), "csv": self.inputs["csv"]}[kind]
        path = self._file(f"z_mutated.{kind}", mutate_bytes(seed, ops))
        for i, item in enumerate(valid):
            np.save(path.parent / f"item{i}.npy", item)
        case = {"model": str(self.models["1d"]), "folder": str(path.parent),
                "store": str(path.parent.with_name(path.parent.name + "_store.zarr")),
                "items": len(valid) + 1}
        return self.run("audit", case, path)

    def explain(self, x: tuple[str, object], arguments: dict) -> str:
        """explain() on the 1D seed model: x is ("array", an input_arrays() spec) or
        ("value", any JSON value)."""
        case = {"model": str(self.models["1d"]), "arguments": arguments, x[0]: x[1]}
        return self.run("explain", case, self._file("case.json", json.dumps(case).encode()))


def new_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="onnx_cam_fuzz_"))


csv_texts = st.one_of(
    st.text(max_size=300),
    st.lists(st.lists(st.sampled_from(["1.5", "-2", "nan", "inf", "", "x", "1e39", " 3 ", '"4"']),
                      min_size=1, max_size=3), max_size=40).map(
        lambda rows: "\n".join(",".join(r) for r in rows)))

#: every format image_contents() may hold (those this Pillow cannot write are skipped)
IMAGE_CONTENTS = ["PNG", "JPEG", "BMP", "TIFF", "GIF", "ICO", "PPM", "PCX", "TGA", "SGI", "WEBP",
                  "IM", "DDS", "EPS", "MSP", "XBM", "BLP", "QOI", "JPEG2000", "SPIDER",
                  "EPS-text"]
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=8)
metadata_entries = st.lists(st.tuples(
    st.sampled_from(["onnx_cam.class_names", "onnx_cam.layer_map", "onnx_cam.layout",
                     "onnx_cam.source"]),
    st.one_of(_JSON.map(json.dumps), st.text(max_size=40),
              st.sampled_from(["[" * 5000, '["a", "b", "c"]', '{"conv1": "c1"}',
                               '{"x": "missing"}', '["a"]', "channels_last"]))),
    min_size=1, max_size=3)
_INTS = st.sampled_from([0, 1, 2, 3, -1, -2**31, 10**6, 2**40])
attribute_edits = st.tuples(st.sampled_from([11, 17]), st.lists(st.tuples(
    st.integers(0, 3),
    st.sampled_from(["pads", "strides", "dilations", "kernel_shape", "output_padding",
                     "output_shape", "op"]),
    st.lists(_INTS, max_size=5)), min_size=1, max_size=3))


def _image_case(campaign, value):
    fmt, suffix, ops = value
    if fmt not in campaign.images:
        fmt = "PNG"
    return campaign.image(fmt, suffix, ops)


#: name -> (what hypothesis draws, how a Campaign runs one drawn value)
TARGETS_FUZZED = {
    "image-format": (st.tuples(st.sampled_from(IMAGE_CONTENTS),
                               st.sampled_from([".png", ".jpg", ".bmp", ".tif"]),
                               st.one_of(st.just([]), byte_ops(head=512))), _image_case),
    "metadata": (metadata_entries, lambda c, entries: c.metadata(entries)),
    "attributes": (attribute_edits, lambda c, v: c.attributes(*v)),
    "computed": (st.tuples(st.sampled_from(["ConstantOfShape", "Range", "Expand", "Tile"]),
                           st.lists(st.sampled_from([1, 2, 10, 1000, 10**4, 10**5]),
                                    min_size=1, max_size=3),
                           st.sampled_from(["50MB", "200MB", "1GB"])),
                 lambda c, v: c.computed(*v)),
    "model": (model_ops(), lambda c, ops: c.model(ops, structural=True)),
    "model-bytes": (byte_ops(), lambda c, ops: c.model(ops, structural=False)),
    "array-file": (st.tuples(st.sampled_from(["npy", "npz"]), byte_ops(head=128)),
                   lambda c, v: c.file(*v)),
    "npz-member": (byte_ops(head=128), lambda c, ops: c.npz_member(ops)),
    "image": (st.tuples(st.sampled_from(["png", "jpeg"]), byte_ops(head=256)),
              lambda c, v: c.file(*v)),
    "csv": (st.one_of(st.tuples(st.just("text"), csv_texts),
                      st.tuples(st.just("bytes"), byte_ops())), lambda c, v: c.csv(*v)),
    "audit": (st.tuples(st.sampled_from(["npy", "csv"]), byte_ops(head=128)),
              lambda c, v: c.audit(*v)),
    "explain": (st.tuples(st.one_of(st.tuples(st.just("array"), input_arrays()),
                                    st.tuples(st.just("value"), odd_inputs)),
                          explain_arguments()), lambda c, v: c.explain(*v)),
}


if __name__ == "__main__" and "--worker" in sys.argv:
    worker()
