"""A bounded fuzz run (well under 60 s): mutated ONNX models, .npy / .npz files, images,
CSV signals and explain() arguments through Explainer, Explainer.explain and
`onnx-cam explain`, each in a worker subprocess (tests/fuzzing.py). The only outcomes allowed
are a result or an OnnxCamError with a message (exit code 2 and a message for the command);
a crash, a hang, another exception or a partial result file fails the test. The longer
campaign: python scripts/fuzz.py --minutes N."""

from __future__ import annotations

import io
import shutil
import zipfile

import numpy as np
import onnx
import pytest
from fuzzing import (
    ALLOWED,
    TARGETS_FUZZED,
    Campaign,
    Worker,
    mutate_bytes,
    new_folder,
    seed_inputs,
    seed_model,
)
from hypothesis import HealthCheck, given, settings

import onnx_cam
from onnx_cam import ModelLoadError, UnsupportedModelError
from onnx_cam.cli import main

FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
#: inputs per target in CI; scripts/fuzz.py runs the same targets for longer
EXAMPLES = {"model": 40, "model-bytes": 20, "array-file": 25, "npz-member": 15, "image": 20,
            "csv": 20, "explain": 40, "audit": 15, "image-format": 8, "metadata": 6,
            "attributes": 8, "computed": 4}


@pytest.fixture(scope="module")
def campaign():
    folder = new_folder()
    worker = Worker(folder / "worker.log")
    yield Campaign(folder, worker)
    worker.close()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("target", list(EXAMPLES))
def test_only_results_or_clear_errors(campaign, target):
    strategy, run = TARGETS_FUZZED[target]

    @settings(FUZZ, max_examples=EXAMPLES[target])
    @given(strategy)
    def one_input(value):
        outcome = run(campaign, value)
        assert outcome in ALLOWED, campaign.tally.findings[-1]

    one_input()


# ---- what the campaign found, kept as regressions (fixed) ----------------------------------------
def seed(edit=None) -> onnx.ModelProto:
    model = onnx.load_from_string(seed_model(1, 2))
    if edit is not None:
        edit(model)
    return model


def non_utf8_name() -> bytes:
    """The seed with its first node's name made of bytes that are not UTF-8."""
    model = seed()
    model.graph.node[0].name = "conXX1"
    return model.SerializeToString().replace(b"conXX1", b"con\x8b\x8b1")


@pytest.mark.parametrize("make, error, words", [
    # a weight whose bytes do not match its shape: ONNX Runtime refused it with a Fail
    (lambda: seed(lambda m: setattr(m.graph.initializer[2], "raw_data",
                                    m.graph.initializer[2].raw_data + b"\0" * 48)),
     ModelLoadError, "holds 240 bytes of data where its shape and type need 192"),
    # a name that is not UTF-8: protobuf hands it over as bytes, onnx.helper raised
    (non_utf8_name, ModelLoadError, "not UTF-8 text"),
    # a convolution whose weight is an activation: symbolic channels broke the memory
    # estimate (TypeError), then ONNX Runtime fails on it
    (lambda: seed(lambda m: m.graph.node[3].input.__setitem__(1, "c1")),
     UnsupportedModelError, "ONNX Runtime (cannot load|failed running) this model"),
])
def test_models_found_by_fuzzing(make, error, words):
    made = make()
    with pytest.raises(error, match=words):
        exp = onnx_cam.Explainer(made if isinstance(made, bytes) else made.SerializeToString())
        exp.explain(np.zeros((2, 2, 32), np.float32))


def npz_with_member(member: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.npy", member)
    return buffer.getvalue()


@pytest.mark.parametrize("name, make, words", [
    # numpy hands back the bytes of a member that is not an .npy: AttributeError
    ("x.npz", lambda npy: npz_with_member(b"\x92" + npy[1:]), "is not an .npy array"),
    # a damaged zip: zipfile.BadZipFile
    ("x.npz", lambda npy: mutate_bytes(npz_with_member(npy), [("flip", 26, 1)]),
     "BadZipFile"),
    # an unterminated header dictionary: tokenize.TokenError from numpy's header parser
    ("x.npy", lambda npy: npy.replace(b"}", b" "), "TokenError"),
])
def test_array_files_found_by_fuzzing(tmp_path, capsys, name, make, words):
    model = tmp_path / "model.onnx"
    model.write_bytes(seed_model(1, 2))
    (tmp_path / name).write_bytes(make(seed_inputs()["npy"]))
    code = main(["explain", str(model), str(tmp_path / name), "--out", str(tmp_path / "out"),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("onnx-cam: error:") and words in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
