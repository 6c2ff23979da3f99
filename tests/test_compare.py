"""Comparison jobs: the table against onnx_cam.metrics.evaluate called directly, cost counts
against the metrics' definitions, resume after an interruption, several models, the page,
refusals."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import torch
import zarr
from conftest import export_bytes, small_cnn
from torch import nn

import onnx_cam
from onnx_cam import InputError, MethodError, StoreError
from onnx_cam.comparison import job as compare_job
from onnx_cam.metrics import MetricError, evaluate

ITEMS, CHUNK, BATCH = 36, 12, 16
METHODS, METRICS = ["gradcam", "integrated_gradients"], ["deletion", "road"]
TIMES = ("method_seconds", "metric_seconds")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two 1D models (different weights), a dataset and labels, as files."""
    folder = tmp_path_factory.mktemp("compare")
    x = np.random.default_rng(4).normal(size=(ITEMS, 2, 40)).astype(np.float32)
    torch.manual_seed(1)
    for name in ("alpha", "beta"):
        (folder / f"{name}.onnx").write_bytes(
            export_bytes(small_cnn(1, nn.Softmax(dim=1)), torch.from_numpy(x[:2])))
    np.save(folder / "x.npy", x)
    np.save(folder / "labels.npy", np.random.default_rng(5).integers(0, 3, ITEMS))
    return folder


def run(files, out, **kwargs):
    options = dict(methods=METHODS, metrics=METRICS, labels=files / "labels.npy",
                   chunk_items=CHUNK, batch_size=BATCH, disagreements=2, progress=False)
    options.update(kwargs)
    return onnx_cam.compare([files / "alpha.onnx", files / "beta.onnx"], files / "x.npy", out,
                            **options)


@pytest.fixture(scope="module")
def reference(files, tmp_path_factory):
    return run(files, tmp_path_factory.mktemp("ref") / "out")


def columns(table) -> dict[str, np.ndarray]:
    return {name: table.column(name).to_numpy(zero_copy_only=False)
            for name in table.column_names}


def test_table_values_equal_evaluate_called_directly(files, reference):
    table = columns(reference.table())
    assert len(table["value"]) == 2 * ITEMS * len(METHODS) * len(METRICS)
    x = np.load(files / "x.npy")
    for model in ("alpha", "beta"):
        exp = onnx_cam.Explainer(files / f"{model}.onnx")
        for method in METHODS:
            layer = "input" if method == "integrated_gradients" else exp.layers[0]
            for start in range(0, ITEMS, CHUNK):  # random draws are seeded per chunk row
                items = x[start:start + CHUNK]
                res = exp.explain(items, layers=[exp.layers[0]], methods=[method])
                direct = evaluate(exp, items, res, METRICS, method=method, layer=layer,
                                  batch_size=BATCH)
                for metric in METRICS:
                    rows = ((table["model"] == model) & (table["method"] == method)
                            & (table["metric"] == metric) & (table["item"] >= start)
                            & (table["item"] < start + CHUNK))
                    assert (table["layer"][rows] == layer).all()
                    np.testing.assert_allclose(table["value"][rows], direct[metric],
                                               rtol=1e-6, atol=1e-9)
                    np.testing.assert_array_equal(table["predicted"][rows], res.predicted)
    assert set(table["better"]) == {"lower", "higher"}
    assert (table["better"][table["metric"] == "deletion"] == "lower").all()
    np.testing.assert_array_equal(table["label"][table["model"] == "alpha"][::4],
                                  np.load(files / "labels.npy"))


def test_costs_count_what_each_method_and_metric_runs(reference):
    table = columns(reference.table())
    passes = {(method, metric): set(table["metric_passes"][(table["method"] == method)
                                                          & (table["metric"] == metric)])
              for method in METHODS for metric in METRICS}
    # README's table: deletion runs 1 / step + 1 inputs per item, ROAD 2 x 9 fractions + 1
    assert passes["gradcam", "deletion"] == {1 / 0.05 + 1}
    assert passes["integrated_gradients", "road"] == {2 * 9 + 1}
    gradcam = table["method"] == "gradcam"
    assert set(table["method_passes"][gradcam]) == {1.0}  # one forward + gradient run
    assert (table["method_passes"][~gradcam] >= 50).all()  # Gauss-Legendre steps, at least
    for name in TIMES:
        assert np.isfinite(table[name]).all() and (table[name] > 0).all()


def test_csv_holds_the_parquet_table(reference):
    parquet, csv = reference.table(), pcsv.read_csv(reference.csv_path)
    assert csv.column_names == parquet.column_names
    np.testing.assert_allclose(csv.column("value").to_numpy(),
                               parquet.column("value").to_numpy(), rtol=1e-12)
    assert csv.column("method").to_pylist() == parquet.column("method").to_pylist()


def test_resume_after_an_interruption_gives_the_same_table(files, reference, tmp_path,
                                                           monkeypatch):
    real, calls = compare_job.process_task, []

    def stop_after_three(spec, task):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(task)
        return real(spec, task)

    monkeypatch.setattr(compare_job, "process_task", stop_after_three)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(files, out)
    marks = zarr.open_group(str(out / "store.zarr"))["chunk_done"][:]
    assert marks.sum() == 3 and not (out / "comparison.parquet").exists()
    calls.clear()
    monkeypatch.setattr(compare_job, "process_task", lambda spec, task: (
        calls.append(task), real(spec, task))[1])
    resumed = run(files, out)
    assert len(calls) == 2 * ITEMS // CHUNK - 3  # only the tasks not marked
    a, b = columns(resumed.table()), columns(reference.table())
    for name in a:
        if name not in TIMES:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    calls.clear()
    run(files, out)  # finished: nothing runs again
    assert calls == []


def test_page_is_self_contained_with_every_section(reference, tmp_path):
    text = reference.page_path.read_text()
    for heading in ("Radar", "Distributions per method", "Metric against cost", "Per class",
                    "alpha: the items where the methods disagree most",
                    "beta: the items where the methods disagree most"):
        assert heading in text
    assert text.count("data:image/png;base64,") == 5  # radar, boxes, cost, 2 x maps
    assert not re.search(r'(src|href)="(?!data:)', text), "the page links an external file"
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the page "
                    "was checked as HTML but not rendered")
    from test_audit import _render
    pixels = _render(reference.page_path, tmp_path / "shot.png")
    colourful = np.abs(pixels.astype(int) - pixels.mean(axis=2, keepdims=True)).max(axis=2)
    assert (colourful > 60).mean() > 0.01, "no figure was drawn"


def test_radar_scales_each_metric_by_its_better_direction():
    from onnx_cam.comparison.page import normalised

    class Spec:
        models = [type("Ref", (), {"name": "m"})]
        methods = ["a", "b", "c"]
        metrics = ["deletion", "road", "deletion_random"]

    means = {("m", "a", "deletion"): (0.2,), ("m", "b", "deletion"): (0.6,),
             ("m", "c", "deletion"): (0.3,), ("m", "a", "road"): (0.1,),
             ("m", "b", "road"): (0.5,), ("m", "c", "road"): (0.2,)}
    axes, scores = normalised(means, Spec)
    assert axes == ["deletion", "road"]  # a random-map baseline has no better direction
    np.testing.assert_allclose(scores["m", "a"], [1.0, 0.0])      # lowest deletion: best
    np.testing.assert_allclose(scores["m", "b"], [0.0, 1.0])      # highest road: best
    np.testing.assert_allclose(scores["m", "c"], [0.75, 0.25])
    # widened to the items' spread, a small difference of means stays small
    _, scores = normalised(means, Spec, {"deletion": (0.0, 1.0), "road": (0.0, 0.5)})
    np.testing.assert_allclose(scores["m", "a"], [0.8, 0.2])
    np.testing.assert_allclose(scores["m", "c"], [0.7, 0.4])


def test_a_2d_job_through_the_command(tmp_path):
    from onnx_cam.cli import main
    torch.manual_seed(2)
    x = np.random.default_rng(6).normal(size=(6, 2, 12, 12)).astype(np.float32)
    (tmp_path / "net2d.onnx").write_bytes(
        export_bytes(small_cnn(2, nn.Softmax(dim=1)), torch.from_numpy(x[:2])))
    x[4, 1, 3, 3] = np.nan
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out"
    assert main(["compare", str(tmp_path / "net2d.onnx"), str(tmp_path / "x.npy"), "--out",
                 str(out), "--method", "hirescam", "--method", "saliency", "--metric",
                 "avg_drop", "--metric", "insertion", "--metric-option", "step=0.25",
                 "--chunk-items", "3", "--disagreements", "1", "--quiet",
                 "--layer", "net2d=/1/Relu_output_0"]) == 0
    table = columns(pq.read_table(out / "comparison.parquet"))
    assert len(table["value"]) == 6 * 2 * 2 and "label" not in table
    assert set(table["layer"][table["method"] == "hirescam"]) == {"/1/Relu_output_0"}
    assert set(table["layer"][table["method"] == "saliency"]) == {"input"}
    inserted = table["metric"] == "insertion"
    assert set(table["metric_passes"][inserted]) == {1 / 0.25 + 1}
    failed = table["item"] == 4  # the item holding NaN: recorded, no values
    assert table["failed"][failed].all() and not table["failed"][~failed].any()
    assert np.isnan(table["value"][failed]).all() and np.isfinite(table["value"][~failed]).all()
    assert "Per class" in (out / "comparison.html").read_text()


def test_the_command_resumes_the_python_job(files, reference):
    """The same job from the command line is recognised as the finished one (same identity)."""
    from onnx_cam.cli import main
    before = reference.table_path.stat().st_mtime_ns
    args = ["compare", str(files / "x.npy"), "--model", str(files / "alpha.onnx"), "--model",
            str(files / "beta.onnx"), "--out", str(reference.table_path.parent),
            "--labels", str(files / "labels.npy"), "--chunk-items", str(CHUNK),
            "--batch-size", str(BATCH), "--quiet"]
    for method in METHODS:
        args += ["--method", method]
    for metric in METRICS:
        args += ["--metric", metric]
    assert main(args) == 0
    assert reference.table_path.stat().st_mtime_ns == before


def test_unknown_names_list_the_known_ones(files, tmp_path):
    with pytest.raises(MethodError, match="Available methods: .*gradcam"):
        run(files, tmp_path / "a", methods=["gradcam", "gradcan"])
    with pytest.raises(MetricError, match=r"Unknown metric\(s\) \['delation'\]; known: "
                                          r"deletion, insertion"):
        run(files, tmp_path / "b", metrics=["delation"])
    with pytest.raises(MetricError, match="Unknown metric option"):
        run(files, tmp_path / "c", metric_options={"stepp": 0.1})
    with pytest.raises(InputError, match="rename one"):
        onnx_cam.compare([files / "alpha.onnx", files / "alpha.onnx"], files / "x.npy",
                         tmp_path / "d")
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_a_store_of_another_job_is_refused_with_the_differences(files, reference, tmp_path):
    out = reference.table_path.parent
    with pytest.raises(StoreError) as error:
        run(files, out, metrics=["deletion"], chunk_items=CHUNK * 2)
    message = str(error.value)
    assert "arguments.metrics" in message and "arguments.chunk_items" in message
    assert "overwrite" in message and "resume" in message
    from onnx_cam.cli import main
    assert main(["report", reference.store, "--out", str(Path(out).parent / "r.html")]) == 2
    bad = Path(out).parent / "bad"
    assert main(["compare", str(files / "alpha.onnx"), str(files / "x.npy"), "--out", str(bad),
                 "--metric", "delation", "--quiet"]) == 2


@pytest.mark.slow
def test_a_dask_cluster_gives_the_same_table(files, reference, tmp_path):
    a = columns(run(files, tmp_path / "out", workers=2).table())
    b = columns(reference.table())
    for name in a:
        if name not in TIMES:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_help_teaches_with_examples(capsys):
    from onnx_cam.cli import main
    assert main(["compare", "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and text.count("(default") >= 5


def test_counting_inputs_counts_every_run_in_every_thread(cnn1d):
    import threading

    from onnx_cam.runtime import counting_inputs
    exp = onnx_cam.Explainer(cnn1d[2])
    x = np.random.default_rng(0).normal(size=(10, 2, 40)).astype(np.float32)
    exp.explain(x[:1])  # sessions built
    with counting_inputs() as outer:
        exp.explain(x, batch_size=4)  # 10 items in runs of 4, 4, 2
        with counting_inputs() as inner:
            worker = threading.Thread(target=exp.explain, args=(x[:3],))
            worker.start()
            worker.join()
    assert (outer[0], inner[0]) == (13, 3)
