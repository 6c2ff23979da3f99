"""The model of a job (audit or comparison): opened on the driver (its Explainer, what the
workers load it from, its SHA-256), and each worker process's Explainer of it, built once and
kept between chunks (and so its ONNX Runtime sessions)."""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import replace

import onnx

from ..errors import StoreError
from ..explainer import Explainer
from ..runtime import RuntimeOptions

_EXPLAINERS: dict[tuple, Explainer] = {}


def open_model(model, class_names, runtime: RuntimeOptions | None):
    """The driver's Explainer, what workers load the model from, and the model's SHA-256."""
    if isinstance(model, Explainer):
        data = model.model.proto.SerializeToString()
        return model, data, hashlib.sha256(data).hexdigest()
    if isinstance(model, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(model))
        explainer = Explainer(path, class_names=class_names, runtime=runtime)
        return explainer, path, _sha256(path)
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else bytes(model)
    explainer = Explainer(data, class_names=class_names, runtime=runtime)
    return explainer, data, hashlib.sha256(data).hexdigest()


def keep_explainer(ref, explainer: Explainer) -> None:
    """Let this process's worker_explainer(ref) return `explainer` (the driver's own)."""
    _EXPLAINERS[(ref.model_sha256, ref.runtime)] = explainer


def worker_explainer(ref) -> Explainer:
    """This process's Explainer of the model `ref` names (its model, model_sha256 and
    runtime); a StoreError when the file read is not the model the job started with."""
    key = (ref.model_sha256, ref.runtime)
    if key not in _EXPLAINERS:
        runtime = ref.runtime
        worker_threads = _dask_worker_threads()
        if worker_threads and runtime.intra_op_threads == 0:
            runtime = replace(runtime, intra_op_threads=worker_threads)
        if _sha256(ref.model) != ref.model_sha256:
            raise StoreError(f"The model this worker reads ({ref.model!r}) is not the one the "
                             "job started with (SHA-256 differs); give workers the same file.")
        _EXPLAINERS[key] = Explainer(ref.model, runtime=runtime)
    return _EXPLAINERS[key]


def _dask_worker_threads() -> int:
    if "distributed" not in sys.modules:
        return 0
    from distributed import get_worker
    try:
        return get_worker().state.nthreads
    except ValueError:  # not inside a worker
        return 0


def _sha256(model: str | bytes) -> str:
    if isinstance(model, bytes):
        return hashlib.sha256(model).hexdigest()
    digest = hashlib.sha256()
    with open(model, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
