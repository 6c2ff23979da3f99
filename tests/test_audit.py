"""Audit jobs: the store's contents, statistics, resume after SIGKILL, refusals, Dask."""

from __future__ import annotations

import errno
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import h5py
import numpy as np
import psutil
import pytest
import torch
import zarr
from conftest import export_bytes, small_cnn
from PIL import Image
from torch import nn

import onnx_cam
from onnx_cam import StoreError, TargetError
from onnx_cam.audit import AuditStore, run

ITEMS, CHANNELS, LENGTH = 240, 2, 40
VOLATILE = ("run_id", "started_at", "finished_at", "sessions")


@pytest.fixture(scope="module")
def files(cnn1d, tmp_path_factory):
    """The 1D test model, a dataset with one NaN item, and labels, as files."""
    folder = tmp_path_factory.mktemp("audit")
    (folder / "model.onnx").write_bytes(cnn1d[2])
    x = np.random.default_rng(1).normal(size=(ITEMS, CHANNELS, LENGTH)).astype(np.float32)
    x[13, 1, 5] = np.nan
    np.save(folder / "data.npy", x)
    np.save(folder / "labels.npy", np.random.default_rng(2).integers(0, 3, ITEMS))
    return folder


def audit(files, store, **kwargs):
    options = dict(methods=["gradcam", "hirescam"], labels=files / "labels.npy",
                   chunk_items=32, batch_size=16, progress=False)
    options.update(kwargs)
    return run(files / "model.onnx", files / "data.npy", store, **options)


def store_files(url) -> dict[str, bytes]:
    """Every file of a store, the root manifest without its times and run id."""
    out = {}
    for path in sorted(Path(url).rglob("*")):
        if path.is_file():
            out[str(path.relative_to(url))] = path.read_bytes()
    root = json.loads(out.pop("zarr.json"))
    manifest = root["attributes"]["onnx_cam_audit"]
    assert manifest["status"] == "complete"
    for key in VOLATILE:
        manifest.pop(key)
    out["zarr.json"] = json.dumps(root, sort_keys=True).encode()
    return out


@pytest.fixture(scope="module")
def reference(files, tmp_path_factory):
    """An uninterrupted single-process run."""
    url = tmp_path_factory.mktemp("ref") / "store.zarr"
    return audit(files, url)


def test_store_holds_what_the_explainer_gives(files, reference):
    x = np.load(files / "data.npy")
    exp = onnx_cam.Explainer(files / "model.onnx")
    ok = np.setdiff1d(np.arange(ITEMS), [13])
    res = exp.explain(x[ok], methods=["gradcam", "hirescam"])
    assert reference.complete and len(reference) == ITEMS
    np.testing.assert_array_equal(reference["predicted"][:][ok], res.predicted)
    np.testing.assert_array_equal(reference["flags"][:][ok], res.flags)
    np.testing.assert_allclose(reference["logits"][:][ok], res.logits, rtol=1e-5, atol=1e-6)
    for method in ("gradcam", "hirescam"):
        cams = reference.cams(method, exp.layers[0])
        assert cams.dtype == np.float16 and cams.shape == (ITEMS, LENGTH)
        np.testing.assert_allclose(cams[:][ok], res.cam(method), atol=1e-3)
        np.testing.assert_allclose(reference.score_ranges(method, exp.layers[0])[:][ok],
                                   res.score_range(method), rtol=1e-5, atol=1e-7)
    manifest = reference.manifest
    sha = __import__("hashlib").sha256((files / "model.onnx").read_bytes()).hexdigest()
    assert manifest["identity"]["model"]["sha256"] == sha
    assert manifest["identity"]["versions"]["onnx_cam"] == onnx_cam.__version__
    assert manifest["started_at"] <= manifest["finished_at"]


def test_nan_item_is_recorded_as_failed_and_left_out(files, reference):
    failed = reference["failed"][:]
    assert np.flatnonzero(failed).tolist() == [13]
    assert "NaN" in str(reference["error"][13])
    assert reference["predicted"][13] == -1 and np.isnan(reference["logits"][13]).all()
    assert (reference.cams(*reference.maps[0])[13] == 0).all()
    assert reference["stats/label/count"][:].sum() == ITEMS - 1


def test_class_statistics_match_a_direct_formula(files, reference):
    layer = reference.maps[0][1]
    cams = reference.cams("gradcam", layer)[:].astype(np.float64)
    labels, predicted = np.load(files / "labels.npy"), reference["predicted"][:]
    ok = ~reference["failed"][:]
    for by, classes_of in (("label", labels), ("predicted", predicted)):
        mean = reference[f"stats/{by}/mean/gradcam/%2F3%2FRelu_output_0"][:]
        std = reference[f"stats/{by}/std/gradcam/%2F3%2FRelu_output_0"][:]
        for k in range(3):
            members = cams[ok & (classes_of == k)]
            if len(members):
                np.testing.assert_allclose(mean[k], members.mean(0), rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(std[k], members.std(0), rtol=1e-4, atol=1e-5)
            else:
                assert np.isnan(mean[k]).all()
    confusion = np.zeros((3, 3), int)
    for i in np.flatnonzero(ok):
        confusion[labels[i], predicted[i]] += 1
    np.testing.assert_array_equal(reference["stats/confusion"][:], confusion)
    label_mean = reference["stats/label/mean/gradcam/%2F3%2FRelu_output_0"][:]
    distance = reference["distance/gradcam/%2F3%2FRelu_output_0"][:]
    i = 7
    expected = np.sqrt(((cams[i] - label_mean[labels[i]]) ** 2).mean())
    assert distance[i] == pytest.approx(expected, rel=1e-5)


def test_summary_table_has_a_row_per_item(files, reference):
    table = reference.summary().to_pydict()
    assert table["item"] == list(range(ITEMS))
    assert table["label"] == np.load(files / "labels.npy").tolist()
    assert table["failed"][13] and table["error"][13]
    column = f"gradcam@{reference.maps[0][1]}:score_max"
    np.testing.assert_allclose(table[column],
                               reference.score_ranges(*reference.maps[0])[:][:, 1])


def test_running_again_does_nothing_and_keeps_the_store(files, reference):
    before = store_files(reference.url)
    audit(files, reference.url)
    assert store_files(reference.url) == before


def test_other_arguments_are_refused_unless_overwrite(files, tmp_path):
    url = tmp_path / "store.zarr"
    audit(files, url, methods=["gradcam"])
    with pytest.raises(StoreError, match=r"(?s)arguments.maps.*--overwrite"):
        audit(files, url)
    assert AuditStore(url).maps[0][0] == "gradcam" and len(AuditStore(url).maps) == 1
    assert len(audit(files, url, overwrite=True).maps) == 2


def test_a_folder_that_is_not_a_store_is_never_replaced_silently(files, tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not an audit store"):
        audit(files, tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


# A job, in its own process, that stops at the Zarr file writes numbered in argv[1] until
# `flag` is removed (or it is killed): what a second job finds at such an instant is what it
# would find while the first one runs.
PAUSED_JOB = r"""
import os, sys, time
import zarr.storage._local as local
from onnx_cam.cli import main
real_put, writes = local._put, []
pauses, flag = [int(k) for k in sys.argv[1].split(",")], sys.argv[2]
def put(path, value, exclusive=False):
    writes.append(path)
    if len(writes) in pauses:
        open(flag, "w").close()
        while os.path.exists(flag):
            time.sleep(0.01)
    return real_put(path, value, exclusive)
local._put = put
sys.exit(main(sys.argv[3:]))
"""


def _paused_job(files, url, pauses, flag):
    return subprocess.Popen([sys.executable, "-c", PAUSED_JOB, ",".join(map(str, pauses)),
                             str(flag), *_audit_command(files, url, "--chunk-items", "60")[3:]],
                            stderr=subprocess.PIPE)


def _wait_until_paused(job, flag):
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert job.poll() is None and time.monotonic() < deadline, job.stderr.read()
        time.sleep(0.01)


def test_a_second_job_is_refused_from_the_first_write_on(files, tmp_path):
    """The first job holds the lock before its first write (1: the root metadata) and while it
    creates the arrays (12); a second job, with or without --overwrite, is refused and
    deletes nothing."""
    url, flag = tmp_path / "store.zarr", tmp_path / "paused"
    job = _paused_job(files, url, [1, 12], flag)
    try:
        for _ in range(2):
            _wait_until_paused(job, flag)
            assert (url / ".lock").is_file(), "the first job writes without its lock"
            before = sorted(p.name for p in url.iterdir())
            for overwrite in (False, True):
                with pytest.raises(StoreError, match=f"Another audit job \\(pid {job.pid} "):
                    audit(files, url, overwrite=overwrite)
                assert sorted(p.name for p in url.iterdir()) == before
            flag.unlink()
    finally:
        if job.poll() is None and flag.exists():
            job.kill()
    assert job.wait(timeout=300) == 0, job.stderr.read()
    assert AuditStore(url).complete and not (url / ".lock").exists()


def test_a_lock_left_by_a_killed_job_is_taken_over(files, tmp_path):
    url, flag = tmp_path / "store.zarr", tmp_path / "paused"
    job = _paused_job(files, url, [40], flag)
    _wait_until_paused(job, flag)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert json.loads((url / ".lock").read_text())["pid"] == job.pid
    assert audit(files, url, chunk_items=60, batch_size=8).complete  # the same job, resumed
    assert len(AuditStore(url).manifest["sessions"]) == 2 and not (url / ".lock").exists()


def test_target_label_explains_the_true_class(files, tmp_path):
    store = audit(files, tmp_path / "s.zarr", target="label", methods=["gradcam"])
    labels = np.load(files / "labels.npy")
    ok = ~store["failed"][:]
    np.testing.assert_array_equal(store["target"][:][ok], labels[ok])
    with pytest.raises(TargetError, match="labels="):
        audit(files, tmp_path / "t.zarr", target="label", labels=None)


def test_numpy_integer_target_and_foil_mean_their_classes(files, tmp_path):
    store = audit(files, tmp_path / "np.zarr", methods=["gradcam"], target=np.int64(2),
                  foil=np.int32(0))
    ok = ~store["failed"][:]
    assert (store["target"][:][ok] == 2).all() and (store["foil"][:][ok] == 0).all()
    # the same job with Python ints resumes it (same identity): nothing is redone
    assert audit(files, tmp_path / "np.zarr", methods=["gradcam"], target=2, foil=0).complete


def test_zarr_hdf5_and_folder_datasets_give_the_same_maps(files, tmp_path, reference):
    x = np.load(files / "data.npy")[:64]
    zarr.save_array(str(tmp_path / "in.zarr"), x)
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["signals"] = x
        f["other"] = np.zeros(3)
    folder = tmp_path / "items"
    folder.mkdir()
    for i, item in enumerate(x):
        np.save(folder / f"{i:03d}.npy", item)
    (folder / "017.npy").write_bytes(b"not an array")
    layer = reference.maps[0][1]
    expected = reference.cams("gradcam", layer)[:64]
    for source, key in ((tmp_path / "in.zarr", None), (tmp_path / "in.h5", "signals"),
                        (folder, None)):
        store = run(files / "model.onnx", source, tmp_path / f"{source.name}.store",
                    key=key, methods=["gradcam"], chunk_items=32, batch_size=16,
                    progress=False)
        failed = store["failed"][:]
        expected_failed = {13} | ({17} if source == folder else set())
        assert set(np.flatnonzero(failed)) == expected_failed
        ok = ~failed
        np.testing.assert_array_equal(store.cams("gradcam", layer)[:][ok], expected[ok])
    assert "017.npy" in str(store["error"][17])
    assert store.summary().to_pydict()["name"][17] == "017.npy"


def _audit_command(files, url, *extra):
    return [sys.executable, "-m", "onnx_cam.cli", "audit", str(files / "model.onnx"),
            str(files / "data.npy"), "--store", str(url), "--labels",
            str(files / "labels.npy"), "--method", "gradcam", "--method", "hirescam",
            "--chunk-items", "8", "--batch-size", "8", "--quiet", *extra]


def test_killed_jobs_resume_to_an_identical_store(files, tmp_path):
    """SIGKILL at three points (early, mid-run, at random), resume, compare bit for bit."""
    url = tmp_path / "killed.zarr"
    done_dir = url / "chunk_done" / "c"
    rng = np.random.default_rng(0)
    kills, outcomes = 0, []
    for threshold in (2, 14, None):
        job = subprocess.Popen(_audit_command(files, url), stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while job.poll() is None and time.monotonic() < deadline:
            done = len(list(done_dir.glob("*"))) if done_dir.exists() else 0
            if (threshold is not None and done >= threshold) or (
                    threshold is None and done >= 16 and rng.random() < 0.3):
                job.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.005)
        job.wait()
        outcomes.append((job.returncode, job.stderr.read()[-800:]))
    assert kills >= 2, f"the job ended before it could be killed: {outcomes}"
    final = subprocess.run(_audit_command(files, url), capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    uninterrupted = tmp_path / "whole.zarr"
    assert subprocess.run(_audit_command(files, uninterrupted)).returncode == 0
    assert store_files(url) == store_files(uninterrupted)
    assert len(AuditStore(url).manifest["sessions"]) == kills + 1


# Audits run in forked children, each SIGKILLed at its k-th Zarr file write (at even k,
# inside the write: zarr's temporary file is left behind), then the same audit again. The
# parent never runs zarr, ONNX Runtime or a kernel, so every child starts clean and cheap.
KILL_DRIVER = r"""
import json, os, signal, sys, traceback
from pathlib import Path
import zarr.storage._local as local
from onnx_cam.audit import run

options = json.loads(sys.argv[1])
root, real_put = Path(options["root"]), local._put


def child(url, kill_at=None, log=None):
    pid = os.fork()
    if pid:
        return os.waitpid(pid, 0)[1]
    writes = []

    def put(path, value, exclusive=False):
        writes.append(str(path))
        if len(writes) == kill_at:
            if kill_at % 2 == 0:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.with_suffix(".0123456789abcdef0123456789abcdef.partial").write_bytes(b"x")
            os.kill(os.getpid(), signal.SIGKILL)
        return real_put(path, value, exclusive)

    local._put = put
    try:
        run(options["model"], options["data"], url, **options["kwargs"])
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    if log:
        Path(log).write_text(json.dumps(writes))
    os._exit(0)


assert child(str(root / "whole.zarr"), log=str(root / "writes.json")) == 0
total = len(json.loads((root / "writes.json").read_text()))
points = sorted({k if k > 0 else total + 1 + k for k in options["points"]}
                & set(range(1, total + 1)))
failed = []
for k in points:
    url = str(root / f"k{k}.zarr")
    status = child(url, kill_at=k)
    if not os.WIFSIGNALED(status):
        failed.append((k, "not killed"))
    elif child(url) != 0:
        failed.append((k, "the same audit then failed"))
print(json.dumps({"writes": total, "points": points, "failed": failed}))
"""


def _kill_and_resume(files, root, points):
    np.save(root / "data.npy", np.load(files / "data.npy")[:48])  # item 13 holds a NaN
    np.save(root / "labels.npy", np.load(files / "labels.npy")[:48])
    options = {"model": str(files / "model.onnx"), "data": str(root / "data.npy"),
               "root": str(root), "points": points,
               "kwargs": {"methods": ["gradcam", "hirescam"], "labels": str(root / "labels.npy"),
                          "chunk_items": 16, "batch_size": 16, "progress": False}}
    out = subprocess.run([sys.executable, "-c", KILL_DRIVER, json.dumps(options)],
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.splitlines()[-1])
    assert not report["failed"], (report, out.stderr[-3000:])
    whole = store_files(root / "whole.zarr")
    for k in report["points"]:
        assert store_files(root / f"k{k}.zarr") == whole, f"killed at write {k}"
    return report


def test_a_job_killed_at_any_write_resumes_to_an_identical_store(files, tmp_path):
    """Kill points around the store's creation (its root metadata, the first arrays, the
    parents of the first map array), one in a chunk, and the last two writes."""
    report = _kill_and_resume(files, tmp_path, [1, 2, 3, 5, 20, 21, 60, -2, -1])
    assert len(report["points"]) == 9


@pytest.mark.slow
def test_a_job_killed_at_every_write_resumes_to_an_identical_store(files, tmp_path):
    """Every write of the store's creation, then every fifth, then the last ten."""
    report = _kill_and_resume(files, tmp_path, [*range(1, 40), *range(40, 400, 5),
                                                *range(-10, 0)])
    assert len(report["points"]) > 60


@pytest.mark.slow
def test_a_local_dask_cluster_writes_the_same_store(files, reference, tmp_path):
    url = tmp_path / "dask.zarr"
    store = audit(files, url, workers=2)
    assert store.complete
    assert store_files(url) == store_files(reference.url)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _render(page: Path, shot: Path) -> np.ndarray:
    """Screenshot of `page` in headless Chromium, as an (H, W, 3) array."""
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={shot.parent / 'profile'}",
         "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()],
        check=True, capture_output=True, timeout=120)
    return np.asarray(Image.open(shot).convert("RGB"))


@pytest.fixture(scope="module")
def store_2d(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("audit2d")
    x = np.random.default_rng(3).normal(size=(40, 2, 16, 16)).astype(np.float32)
    (folder / "model.onnx").write_bytes(
        export_bytes(small_cnn(2, nn.Softmax(dim=1)), torch.from_numpy(x[:2])))
    np.save(folder / "x.npy", x)
    return run(folder / "model.onnx", folder / "x.npy", folder / "store.zarr", progress=False,
               chunk_items=16)


@pytest.mark.parametrize("which", ["reference", "store_2d"])
def test_report_is_one_self_contained_page(which, request, tmp_path):
    from onnx_cam.cli import main
    store = request.getfixturevalue(which)
    page = tmp_path / "report.html"
    assert main(["report", store.url, "--out", str(page), "--outliers", "3"]) == 0
    text = page.read_text()
    assert "mean and standard deviation of the CAM" in text and "differ most" in text
    assert text.count("data:image/png;base64,") >= 3
    assert not re.search(r'(src|href)="(?!data:)', text), "the page links an external file"
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the page "
                    "was checked as HTML but not rendered")
    pixels = _render(page, tmp_path / "shot.png")
    assert pixels.shape[:2] == (1600, 1200)
    colourful = np.abs(pixels.astype(int) - pixels.mean(axis=2, keepdims=True)).max(axis=2)
    assert (colourful > 60).mean() > 0.01, "no figure was drawn"


def test_report_refuses_an_unfinished_audit(files, tmp_path):
    from onnx_cam.cli import main
    url = tmp_path / "store.zarr"
    audit(files, url, methods=["gradcam"])
    group = zarr.open_group(str(url), mode="r+")
    manifest = dict(group.attrs["onnx_cam_audit"], status="running")
    group.attrs["onnx_cam_audit"] = manifest
    assert main(["report", str(url), "--out", str(tmp_path / "r.html")]) == 2
    assert not (tmp_path / "r.html").exists()


def test_a_full_disk_keeps_the_done_chunks_and_the_job_resumes(files, reference, tmp_path,
                                                                monkeypatch):
    import zarr.storage._local as local_store
    real_put, writes = local_store._put, []

    def put_until_full(path, value, exclusive=False):
        writes.append(path)
        if len(writes) > 60:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_put(path, value, exclusive)

    url = tmp_path / "store.zarr"
    monkeypatch.setattr(local_store, "_put", put_until_full)
    with pytest.raises(StoreError, match="(?s)No space left.*run the same command again"):
        audit(files, url)
    done = AuditStore(url)["chunk_done"][:]
    assert 0 < done.sum() < len(done)
    monkeypatch.setattr(local_store, "_put", real_put)
    audit(files, url)
    assert store_files(url) == store_files(reference.url)


def test_a_full_disk_at_any_write_names_the_store_and_loses_nothing(files, tmp_path,
                                                                     monkeypatch):
    """The disk fills up at the first write, at the first write of each group's metadata of the
    maps (zarr writes a group with its first array, concurrently), at the first statistics
    write and at the last write; the same job then ends with a store identical to an
    uninterrupted run's, every metadata file included."""
    import zarr.storage._local as local_store
    real_put, writes = local_store._put, []
    np.save(tmp_path / "data.npy", np.load(files / "data.npy")[:48])
    np.save(tmp_path / "labels.npy", np.load(files / "labels.npy")[:48])
    explainer = onnx_cam.Explainer(files / "model.onnx")

    def job(url):
        return run(explainer, tmp_path / "data.npy", url, methods=["gradcam", "hirescam"],
                   labels=tmp_path / "labels.npy", chunk_items=16, batch_size=16,
                   progress=False)

    def recording(path, value, exclusive=False):
        writes.append(str(path.relative_to(tmp_path / "whole.zarr")))
        return real_put(path, value, exclusive)

    monkeypatch.setattr(local_store, "_put", recording)
    job(tmp_path / "whole.zarr")
    whole = store_files(tmp_path / "whole.zarr")
    groups = [i for i, path in enumerate(writes, 1)
              if path.startswith(("cams/", "score_range/")) and path.count("/") == 2
              and writes.index(path) == i - 1]
    points = [1, *groups, next(i for i, p in enumerate(writes, 1) if p.startswith("stats/")),
              len(writes)]
    assert len(groups) == 4
    def full_from(k):
        count = [0]

        def put(path, value, exclusive=False):
            count[0] += 1
            if count[0] >= k:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return real_put(path, value, exclusive)
        return put

    for k in points:
        url = tmp_path / f"full{k}.zarr"
        monkeypatch.setattr(local_store, "_put", full_from(k))
        with pytest.raises(StoreError) as refused:
            job(url)
        assert re.search(f"(?s){re.escape(repr(str(url)))}.*disk is full.*Free space.*run the "
                         "same command again.*nothing done is lost", str(refused.value)), k
        monkeypatch.setattr(local_store, "_put", real_put)
        job(url)
        assert store_files(url) == whole, f"the disk was full from write {k} ({writes[k - 1]})"


def test_resume_refuses_class_names_that_change_what_a_target_means(files, tmp_path):
    url, names = tmp_path / "s.zarr", ["cat", "dog", "fox"]
    store = audit(files, url, methods=["gradcam"], class_names=names, target="dog")
    assert set(store["target"][:][~store["failed"][:]]) == {1}
    with pytest.raises(StoreError, match=r"(?s)target_class: store has 1, this job 0.*"
                                         r"class_names.*--overwrite"):
        audit(files, url, methods=["gradcam"], class_names=["dog", "cat", "fox"], target="dog")
    assert audit(files, url, methods=["gradcam"], class_names=names, target="dog").complete


def test_folder_members_holding_no_item_are_recorded_as_failed(files, reference, tmp_path):
    x, folder = np.load(files / "data.npy")[:6], tmp_path / "items"
    folder.mkdir()
    for i in (0, 1, 3, 5):
        np.save(folder / f"{i}.npy", x[i])
    np.save(folder / "2.npy", np.zeros((0, CHANNELS, LENGTH), np.float32))
    np.savez(folder / "4.npz", a=np.zeros((0, CHANNELS, LENGTH), np.float32))
    store = run(files / "model.onnx", folder, tmp_path / "s.zarr", methods=["gradcam"],
                progress=False)
    assert store.complete and np.flatnonzero(store["failed"][:]).tolist() == [2, 4]
    assert str(store["error"][2]).startswith("2.npy: ")
    assert str(store["error"][4]).startswith("4.npz: ")
    layer, ok = reference.maps[0][1], [0, 1, 3, 5]
    np.testing.assert_allclose(store.cams("gradcam", layer)[:][ok],
                               reference.cams("gradcam", layer)[:][ok], atol=1e-3)


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:  # exited (or a zombie) since it was listed
        return []


@pytest.mark.slow
def test_a_dask_worker_killed_mid_run_loses_nothing(files, reference, tmp_path):
    url = tmp_path / "store.zarr"
    outcome = {}

    def job():
        try:
            outcome["store"] = audit(files, url, workers=2, chunk_items=32)
        except Exception as exc:  # reported below
            outcome["error"] = exc

    thread = threading.Thread(target=job)
    thread.start()
    done_dir, killed = url / "chunk_done" / "c", None
    deadline = time.monotonic() + 180
    while thread.is_alive() and killed is None and time.monotonic() < deadline:
        workers = [p for p in psutil.Process().children(recursive=True)
                   if "spawn_main" in " ".join(_cmdline(p))]
        if len(workers) == 2 and done_dir.exists() and len(list(done_dir.glob("*"))) >= 2:
            killed = workers[0].pid
            try:
                workers[0].kill()
            except psutil.NoSuchProcess:
                killed = None
        time.sleep(0.01)
    thread.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    assert killed is not None, "the job ended before a worker could be killed"
    assert store_files(url) == store_files(reference.url)


def test_an_fsspec_url_store_works_like_a_folder(files, reference):
    store = audit(files, "memory://audits/test.zarr")
    layer = reference.maps[0][1]
    np.testing.assert_array_equal(store.cams("gradcam", layer)[:],
                                  reference.cams("gradcam", layer)[:])
    assert store.summary().num_rows == ITEMS


def test_the_command_prints_the_manifest_and_refuses_with_exit_code_2(files, tmp_path, capsys):
    from onnx_cam.cli import main
    base = ["audit", str(files / "model.onnx"), str(files / "data.npy"), "--store",
            str(tmp_path / "s.zarr"), "--chunk-items", "64", "--quiet"]
    assert main([*base, "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["status"] == "complete" and manifest["failed_items"] == 1
    assert main([*base, "--method", "hirescam"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*base, "--target", "label"]) == 2
    assert "--labels" in capsys.readouterr().err


def test_metrics_are_stored_per_item_and_map(files, tmp_path):
    from onnx_cam.metrics import evaluate
    store = audit(files, tmp_path / "m.zarr", methods=["gradcam"], metrics=["deletion"])
    x = np.load(files / "data.npy")[:32]
    exp = onnx_cam.Explainer(files / "model.onnx")
    ok = np.flatnonzero(np.isfinite(x.reshape(32, -1)).all(1))
    expected = evaluate(exp, x[ok], exp.explain(x[ok]), ["deletion"])["deletion"]
    stored = store[f"metrics/deletion/gradcam/{quote(exp.layers[0], safe='')}"][:32]
    np.testing.assert_allclose(stored[ok], expected, rtol=1e-5)
    assert np.isnan(stored[13])  # the NaN item
    column = store.summary().to_pydict()[f"gradcam@{exp.layers[0]}:deletion"]
    np.testing.assert_allclose(column[:32], stored, rtol=0)


def test_input_attributions_are_stored_under_layer_input(files, cnn1d, tmp_path):
    store = audit(files, tmp_path / "a.zarr", methods=["gradcam", "input_x_gradient"],
                  chunk_items=120, batch_size=64)
    layer = onnx_cam.Explainer(files / "model.onnx").layers[0]
    assert store.maps == [("gradcam", layer), ("input_x_gradient", "input")]
    x = np.load(files / "data.npy")
    ok = np.flatnonzero(np.isfinite(x.reshape(ITEMS, -1)).all(1))
    xt = torch.from_numpy(x[ok]).requires_grad_()
    logits = cnn1d[0][:-1](xt)  # the model the files hold, before its softmax
    predicted = torch.from_numpy(store["predicted"][:][ok])
    logits[torch.arange(len(ok)), predicted].sum().backward()
    total = np.abs((xt * xt.grad).sum(1).detach().numpy())
    lo, hi = total.min(1, keepdims=True), total.max(1, keepdims=True)
    cams = store.cams("input_x_gradient", "input")[:]
    np.testing.assert_allclose(cams[ok], (total - lo) / (hi - lo), atol=1e-3)
    assert not cams[13].any()  # the NaN item
    assert "input_x_gradient@input:distance" in store.summary().column_names


def test_npy_datasets_are_read_by_chunk_and_bad_files_refused(tmp_path):
    from onnx_cam.audit.datasets import NpyDataset
    x = np.random.default_rng(0).normal(size=(37, 3, 5))  # float64: converted per chunk
    np.save(tmp_path / "a.npy", x)
    np.testing.assert_array_equal(NpyDataset(str(tmp_path / "a.npy")).read(5, 17).x,
                                  x[5:17].astype(np.float32))
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    with pytest.raises(onnx_cam.InputError, match="Fortran"):
        NpyDataset(str(tmp_path / "f.npy"))
    (tmp_path / "t.npy").write_bytes((tmp_path / "a.npy").read_bytes()[:-100])
    with pytest.raises(onnx_cam.InputError, match="truncated|mmap length"):
        NpyDataset(str(tmp_path / "t.npy")).read(30, 37)
