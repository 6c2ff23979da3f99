"""One Explainer shared by several threads (as a web service would share it): the results
equal sequential calls, each cached session is built once, and Numba's non-thread-safe
`workqueue` threading layer does not crash the process."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter

import numpy as np
import pytest

import onnx_cam
import onnx_cam.explainer as explainer_module
from onnx_cam.concurrency import OnceCache

ROOT = pathlib.Path(__file__).resolve().parents[1]
THREADS = 8


def jobs(exp: onnx_cam.Explainer, rng) -> list[tuple[np.ndarray, dict]]:
    """Eight different calls: targets, layers, methods (perturbation ones use probes),
    scores and batch sizes differ, so they need different sessions."""
    deep, shallow = exp.layers[0], exp.layers[-1]
    kinds = [
        dict(),
        dict(targets=1, layers=[deep, shallow], methods=["gradcam", "hirescam"]),
        dict(targets="top2", methods="gradcam++", batch_size=2),
        dict(foils=0, methods="layercam", score="log_probs"),
        dict(layers=shallow, methods=["eigencam", "scorecam"], batch_size=3),
        dict(targets=2, methods="ablationcam", batch_size=2),
        dict(methods="xgradcam", score="probs", batch_size=1),
        dict(targets=[0, 1, 2, 0, 1], layers=deep, methods=["gradcamelementwise",
                                                            "eigengradcam"]),
    ]
    return [(rng.standard_normal((5, 2, 40)).astype(np.float32), kind) for kind in kinds]


def assert_same(got: onnx_cam.Explanation, want: onnx_cam.Explanation, what: str):
    for name in ("logits", "targets", "items", "flags"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=what)
    assert got.cams.keys() == want.cams.keys()
    for store in ("cams", "raws", "ranges"):
        for key in want.cams:
            np.testing.assert_allclose(getattr(got, store)[key], getattr(want, store)[key],
                                       rtol=1e-6, atol=1e-7, err_msg=f"{what} {store} {key}")


@pytest.mark.filterwarnings("ignore::onnx_cam.ZeroGradientWarning")  # a foil = the target
def test_threads_give_the_results_of_sequential_calls(cnn1d, rng, monkeypatch):
    work = jobs(onnx_cam.Explainer(cnn1d[2]), rng)
    sequential = onnx_cam.Explainer(cnn1d[2])
    want = [sequential.explain(x, **kind) for x, kind in work]

    built = Counter()
    build = explainer_module.build_cam_model

    def slow_build(model, layers, spatial, *args):
        built[(tuple(layers), tuple(spatial), *args)] += 1
        time.sleep(0.05)  # widen the window in which a second thread could build it too
        return build(model, layers, spatial, *args)

    monkeypatch.setattr(explainer_module, "build_cam_model", slow_build)
    shared = onnx_cam.Explainer(cnn1d[2])
    start = threading.Barrier(THREADS)
    results: dict[int, list] = {i: [] for i in range(THREADS)}
    errors = []

    def serve(i: int):
        try:
            start.wait()
            for round_ in range(3):  # every thread asks for every job at some point
                x, kind = work[(i + round_) % len(work)]
                results[i].append(((i + round_) % len(work), shared.explain(x, **kind)))
        except Exception as exc:  # reported below, with the thread's job
            errors.append((i, repr(exc)))

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and not any(t.is_alive() for t in threads), errors
    assert sum(len(r) for r in results.values()) == 3 * THREADS
    for i, done in results.items():
        for job, res in done:
            assert_same(res, want[job], f"thread {i} job {job}")
    assert built and max(built.values()) == 1, built  # each session built once


def test_once_cache_builds_each_key_once_under_contention():
    cache: OnceCache[int] = OnceCache()
    calls = Counter()
    start = threading.Barrier(THREADS)

    def build(key):
        calls[key] += 1
        time.sleep(0.02)
        return key * 10

    out = []

    def ask(i):
        start.wait()
        out.append([cache.get(k, lambda k=k: build(k)) for k in (i % 2, 2, 3)])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(calls.values()) == {1} and len(calls) == 4
    assert all(row[1:] == [20, 30] for row in out)


def test_workqueue_threading_layer_does_not_crash(cnn1d, tmp_path):
    """Numba's workqueue layer aborts the process when two threads launch kernels at once;
    onnx-cam serialises its kernels under that layer. A subprocess, as it would abort."""
    model = tmp_path / "model.onnx"
    model.write_bytes(cnn1d[2])
    code = textwrap.dedent(f"""
        import threading, numba, numpy as np, onnx_cam
        exp = onnx_cam.Explainer({str(model)!r})
        x = np.random.default_rng(0).standard_normal((6, 2, 40)).astype(np.float32)
        want = exp.explain(x, methods=["gradcam", "hirescam"])
        bad = []
        def work():
            for _ in range(20):
                got = exp.explain(x, methods=["gradcam", "hirescam"])
                bad.extend(k for k in want.cams if not np.array_equal(got.cams[k],
                                                                       want.cams[k]))
        threads = [threading.Thread(target=work) for _ in range({THREADS})]
        [t.start() for t in threads]
        [t.join() for t in threads]
        print(numba.threading_layer(), len(bad))
    """)
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["workqueue", "0"]


@pytest.mark.parametrize("layer", ["workqueue", "omp"])
def test_kernel_guard_knows_which_layers_are_thread_safe(layer):
    code = textwrap.dedent("""
        import numpy as np
        from onnx_cam import kernels
        from onnx_cam.concurrency import kernels_thread_safe
        before = kernels_thread_safe()
        kernels.spatial_mean(np.ones((1, 1, 4), np.float32))
        print(before, kernels_thread_safe())
    """)
    env = {**os.environ, "NUMBA_THREADING_LAYER": layer}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", str(layer != "workqueue")]
