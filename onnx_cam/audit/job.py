"""Audit jobs: explain a whole dataset chunk by chunk into an audit store; resumable after
a kill, on one process or a Dask cluster, with the same store either way."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import uuid
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone

import numpy as np
import onnx
import onnxruntime

from .. import __version__
from ..errors import InputError, StoreError, TargetError
from ..explainer import Explainer
from ..explanation import INPUT
from ..inputs import preprocess_for
from ..methods import get_method
from ..metrics import METRICS, evaluate
from ..numerics import NumericsWarning, RowFlag, describe_flags
from ..progress import progress_bar
from ..runtime import RuntimeOptions
from ..side_inputs import split_inputs
from ..targets import plan_targets
from . import stats
from .datasets import Dataset, open_dataset, open_inputs, read_labels
from .store import (
    MANIFEST_KEY,
    STORE_FORMAT,
    AuditStore,
    StoreLock,
    cam_chunk_items,
    clear_store,
    discard_root,
    done_chunks,
    identity_differences,
    map_path,
    remove_partial_files,
    repair_group_metadata,
    store_state,
    writing,
)

CAM_DTYPES = ("float16", "float32")
# Rows whose maps are NaN: recorded as failed (left out of the statistics).
NAN_MAPS = (RowFlag.SCORE_NONFINITE | RowFlag.ACTIVATION_NONFINITE | RowFlag.GRADIENT_NONFINITE
            | RowFlag.MAP_NONFINITE)
# A worker process keeps its Explainer (and so its ONNX Runtime sessions) between chunks.
_EXPLAINERS: dict[tuple, Explainer] = {}
_ARRAYS: dict[tuple, dict] = {}


class Chunked:
    """A job over `dataset` in chunks of `chunk_items` items (the unit of resume and Dask)."""

    dataset: Dataset
    chunk_items: int

    @property
    def chunks(self) -> int:
        return -(-len(self.dataset) // self.chunk_items)

    def bounds(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_items
        return start, min(start + self.chunk_items, len(self.dataset))


@dataclass(frozen=True)
class AuditSpec(Chunked):
    """What a worker needs to process one chunk; picklable."""

    model: str | bytes  # a path the workers can read, or the model's bytes (local jobs)
    model_sha256: str
    dataset: Dataset
    store: str
    run_id: str
    methods: tuple[str, ...]
    layers: tuple[str, ...]
    target: str | int  # "pred", "label" or a class index (names resolved by run)
    foil: int | None
    score: str
    batch_size: int
    chunk_items: int
    cam_dtype: str
    labels: np.ndarray | None
    runtime: RuntimeOptions
    metrics: tuple[str, ...] = ()
    input: str | None = None  # a model with several inputs: the one the maps cover

    @property
    def maps(self) -> list[tuple[str, str]]:
        """Every (method, layer) stored; input-level methods once, under layer "input"."""
        keys: list[tuple[str, str]] = []
        for m in self.methods:
            keys += ([(m, INPUT)] if get_method(m).level == "input"
                     else [(m, layer) for layer in self.layers])
        return keys


def run(model, dataset, store, *, methods="gradcam", layers="auto", target="pred", foil=None,
        labels=None, key: str | None = None, preprocess=None, score: str = "logits",
        batch_size: int = 64, chunk_items: int = 256, cam_dtype: str = "float16",
        class_names=None, overwrite: bool = False, scheduler: str | None = None,
        workers: int | None = None, runtime: RuntimeOptions | None = None,
        metrics=(), progress: bool = True, input: str | None = None) -> AuditStore:
    """Explain every item of `dataset` into the Zarr store at `store`; returns the store.

    model: an .onnx path (what a cluster needs), ONNX bytes / ModelProto, or an Explainer.
    dataset: an array, a .npy / .zarr / .h5 path (key= names the array) or a folder of files
    (read with onnx_cam.inputs: preprocess= an onnx_cam.inputs.Preprocess, or a dict of the
    fields that differ from the model's defaults). target: "pred", "label" (needs labels=),
    a class index or name; foil: a contrastive class. labels: an array, a .npy or a text file
    (one label per line). Running the same call again resumes an interrupted job and does
    nothing on a finished one; a store written with another model or other arguments is
    refused unless overwrite=True. scheduler= a Dask scheduler address ("tcp://host:8786"),
    workers= N starts a local Dask cluster of N processes. metrics: names of
    onnx_cam.metrics to store per item and map (e.g. ("deletion", "road")), with their
    default options. A model with several inputs reads a .npz (np.savez) or a Zarr group with
    one array per input name (or a dict of arrays); input= names the one the maps cover
    (default: the one the layers are computed from), the others are fed as given.
    """
    if cam_dtype not in CAM_DTYPES:
        raise InputError(f"cam_dtype={cam_dtype!r}; use one of {CAM_DTYPES}.")
    # numpy scalars (a label read from an array) name the same class as Python's
    target, foil = (v.item() if isinstance(v, np.generic) else v for v in (target, foil))
    if chunk_items < 1 or batch_size < 1:
        raise InputError("chunk_items and batch_size must be >= 1.")
    if scheduler is not None and workers is not None:
        raise InputError("Give either scheduler= (an existing Dask cluster) or workers= (start "
                         "a local one), not both.")
    metric_names = tuple(dict.fromkeys([metrics] if isinstance(metrics, str) else metrics))
    unknown = [m for m in metric_names if m not in METRICS]
    if unknown:
        raise InputError(f"Unknown metric(s) {unknown}; known: {list(METRICS)}.")
    explainer, model_ref, sha = _open_model(model, class_names, runtime)
    if explainer.model.dense:
        raise InputError("Audit jobs explain class scores of a (N, classes) output; this "
                         "model's output is dense (segmentation / detection): use "
                         "Explainer.explain with Segmentation / Detection targets.")
    several = len(explainer.inputs) > 1
    if several:
        if key is not None:
            raise InputError(f"key= names one array; the model takes the inputs "
                             f"{explainer.inputs}, read from one array each (named after "
                             "them) in a .npz or a Zarr group. Drop key= (--key).")
        input = explainer.explained_input(input, layers)
        data = open_inputs(dataset, explainer.inputs, input)
        explainer_of_input = explainer.for_input(input)
    else:
        if preprocess is None or isinstance(preprocess, dict):
            preprocess = replace(preprocess_for(explainer), **(preprocess or {}))
        data = open_dataset(dataset, key=key, item_shape=explainer.model.input_shape[1:],
                            preprocess=preprocess)
        explainer_of_input = explainer
    if len(data) == 0:
        raise InputError("The dataset holds no items.")
    first = data.read(0, 1)  # shape errors before writing
    explainer_of_input.check_input(np.nan_to_num(first.x))
    if several:
        split_inputs(explainer_of_input.model, {input: first.x, **first.side})
    label_array = read_labels(labels, len(data), explainer.class_names)
    _check_targets(target, label_array, explainer.num_classes)
    target_class = None if target in ("pred", "label") else _class_index(explainer, target=target)
    foil_class = None if foil is None else _class_index(explainer, foil=foil)
    method_names = list(dict.fromkeys(
        get_method(m).name for m in ([methods] if isinstance(methods, str) else methods)))
    layer_names = list(dict.fromkeys(
        explainer_of_input.layers[0] if layer == "auto" else layer
        for layer in ([layers] if isinstance(layers, str) else layers)))
    for layer in layer_names:
        explainer_of_input.model.resolve_layer(layer)  # unknown layers fail here
    distributed = scheduler is not None or workers is not None
    if distributed and (data.kind == "array" or data.source == "<memory>"):
        raise InputError("An in-memory array cannot be sent to a Dask cluster chunk by chunk; "
                         "save it as a .npy file or a Zarr array first.")
    if distributed and isinstance(model_ref, bytes):
        raise InputError("Dask workers load the model from a file: pass the path of the .onnx "
                         "file (Explainer.save_model writes one).")

    url = os.fspath(store)
    spec = AuditSpec(model_ref, sha, data, url, "", tuple(method_names), tuple(layer_names),
                     target if target_class is None else target_class, foil_class, score,
                     batch_size, chunk_items, cam_dtype, label_array, explainer.runtime,
                     metric_names, input if several else None)
    identity = _identity(spec, explainer, data, label_array, target, foil)
    with StoreLock(url):
        with writing(url, "Preparing the store"):
            run_id = _prepare_store(spec, identity, explainer_of_input, overwrite)
        spec = replace(spec, run_id=run_id)
        _EXPLAINERS[(sha, spec.runtime)] = explainer
        group = AuditStore(url, mode="r+").group
        todo = [c for c, done in enumerate(done_chunks(group)) if not done]
        if todo:
            remaining = sum(stop - start for start, stop in map(spec.bounds, todo))
            with progress_bar("audit", enabled=progress) as update:
                done = Counter(len(data) - remaining, len(data), update)
                if distributed:
                    _run_on_dask(spec, todo, done, scheduler, workers)
                else:
                    for chunk in todo:
                        done.add(process_chunk(spec, chunk))
        if group.attrs[MANIFEST_KEY].get("status") != "complete":
            with writing(url, "Writing the statistics and the summary"):
                stats.write_statistics(group, spec, explainer.num_classes)
                stats.write_summary(url, group, spec)
                repair_group_metadata(url)
                _update_manifest(group, status="complete", finished_at=_now(),
                                 failed_items=int(np.count_nonzero(group["failed"][:])),
                                 flagged_items=int(np.count_nonzero(group["flags"][:])))
        remove_partial_files(url)
    return AuditStore(url)


def process_chunk(spec: AuditSpec, chunk: int) -> int:
    """Explain one chunk and write it to the store, its done mark last. Returns its items."""
    explainer = _explainer(spec)
    start, stop = spec.bounds(chunk)
    read = spec.dataset.read_finite(start, stop)
    x, failures, side = read.x, read.failures, read.side or {}
    with warnings.catch_warnings():  # the store keeps each row's flags instead
        warnings.simplefilter("ignore", NumericsWarning)
        given = {spec.input: x, **side} if spec.input else x
        res = explainer.explain(given, targets=_chunk_targets(spec, start, stop), foils=spec.foil,
                                layers=list(spec.layers), methods=list(spec.methods),
                                score=spec.score, batch_size=spec.batch_size, input=spec.input)
    for i in np.flatnonzero(res.flags & NAN_MAPS):
        failures.setdefault(int(i), "; ".join(describe_flags(res.flags[i])))
    failed = np.zeros(len(x), bool)
    failed[sorted(failures)] = True
    errors = np.array([failures.get(i, "") for i in range(len(x))], dtype=str)
    values = {"logits": res.logits, "probs": res.probs, "predicted": res.predicted,
              "target": res.targets, "failed": failed, "error": errors, "flags": res.flags}
    if spec.foil is not None:
        values["foil"] = res.foils
    if spec.labels is not None:
        values["label"] = spec.labels[start:stop]
    for method, layer in spec.maps:
        values[map_path("cams", method, layer)] = res.cam(method, layer).astype(spec.cam_dtype)
        values[map_path("score_range", method, layer)] = res.score_range(method, layer)
        if spec.metrics:
            scores = evaluate(explainer, given, res, spec.metrics, method=method, layer=layer,
                              input=spec.input)
            for name, value in scores.items():
                values[map_path(f"metrics/{name}", method, layer)] = value.astype(np.float32)
    arrays = _arrays(spec)
    with writing(spec.store, f"Writing chunk {chunk} (items {start}-{stop - 1})"):
        for name, value in values.items():
            if failed.any() and name not in ("failed", "error", "label", "flags"):
                value = _blank(name, value, failed)
            arrays[name][start:stop] = value
        arrays["chunk_done"][chunk] = 1
    return stop - start


def _blank(name: str, value: np.ndarray, failed: np.ndarray) -> np.ndarray:
    """Rows of failed items: -1 for indices, 0 for maps, NaN for scores and metrics."""
    value = value.copy()
    value[failed] = (-1 if value.dtype.kind in "iu" else
                     0 if name.startswith("cams/") else np.nan)
    return value


def _chunk_targets(spec: AuditSpec, start: int, stop: int):
    if spec.target == "pred":
        return None
    if spec.target == "label":
        return [int(v) for v in spec.labels[start:stop]]
    return spec.target


def _check_targets(target, labels, classes: int) -> None:
    if target == "label":
        if labels is None:
            raise TargetError("target='label' explains each item's true class: give labels= "
                              "(CLI: --labels FILE).")
    if labels is not None and ((labels < 0) | (labels >= classes)).any():
        bad = labels[(labels < 0) | (labels >= classes)][:5].tolist()
        raise TargetError(f"Labels {bad} are outside the model's {classes} classes.")


def _explainer(spec: AuditSpec) -> Explainer:
    key = (spec.model_sha256, spec.runtime)
    if key not in _EXPLAINERS:
        runtime = spec.runtime
        worker_threads = _dask_worker_threads()
        if worker_threads and runtime.intra_op_threads == 0:
            runtime = replace(runtime, intra_op_threads=worker_threads)
        if _sha256(spec.model) != spec.model_sha256:
            raise StoreError(f"The model this worker reads ({spec.model!r}) is not the one the "
                             "job started with (SHA-256 differs); give workers the same file.")
        _EXPLAINERS[key] = Explainer(spec.model, runtime=runtime)
    return _EXPLAINERS[key]


def _arrays(spec: AuditSpec) -> dict:
    """The store's arrays, opened once per process and job."""
    key = (spec.store, spec.run_id)
    if key not in _ARRAYS:
        group = AuditStore(spec.store, mode="r+").group
        _ARRAYS.clear()
        _ARRAYS[key] = _LazyArrays(group)
    return _ARRAYS[key]


class _LazyArrays(dict):
    def __init__(self, group):
        super().__init__()
        self.group = group

    def __missing__(self, name):
        self[name] = self.group[name]
        return self[name]


def _dask_worker_threads() -> int:
    if "distributed" not in sys.modules:
        return 0
    from distributed import get_worker
    try:
        return get_worker().state.nthreads
    except ValueError:  # not inside a worker
        return 0


class Counter:
    """Items done so far, reported to a progress callback."""

    def __init__(self, done: int, total: int, report):
        self.done, self.total, self.report = done, total, report
        report(done, total)

    def add(self, items: int) -> None:
        self.done += items
        self.report(self.done, self.total)


def _run_on_dask(spec, todo: list, done: Counter, scheduler, workers,
                 task=process_chunk) -> None:
    """Run task(spec, t) for every t of `todo` on a Dask cluster; each returns its items."""
    from distributed import Client, LocalCluster, as_completed
    if scheduler is not None:
        client, cluster = Client(scheduler), None
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    try:
        futures = client.map(task, [spec] * len(todo), todo, pure=False)
        for future in as_completed(futures):
            done.add(future.result())
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _open_model(model, class_names, runtime):
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


def _sha256(model: str | bytes) -> str:
    if isinstance(model, bytes):
        return hashlib.sha256(model).hexdigest()
    digest = hashlib.sha256()
    with open(model, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _class_index(explainer: Explainer, *, target=None, foil=None) -> int:
    """The class a target or foil (an index or a class name) means for this model."""
    plan = plan_targets(0 if target is None else target, foil, 1, explainer.num_classes,
                        explainer.class_names, predict=None)
    return int(plan.targets[0] if foil is None else plan.foils[0])


def _identity(spec: AuditSpec, explainer: Explainer, data: Dataset, labels, target,
              foil) -> dict:
    """What must match for a store to be resumed by this job (as JSON gives it back): the
    classes' names and the classes the target and foil resolve to included, so one store never
    holds two meanings of one name."""
    opsets = {imp.domain or "ai.onnx": imp.version for imp in explainer.model.proto.opset_import}
    identity = {
        "format": STORE_FORMAT,
        "model": {"sha256": spec.model_sha256, "opset": opsets.get("ai.onnx"),
                  "source": spec.model if isinstance(spec.model, str) else "<bytes>",
                  "classes": explainer.num_classes, "class_names": explainer.class_names},
        "dataset": data.describe(),
        "arguments": {"maps": [list(m) for m in spec.maps], "target": target,
                      "target_class": None if spec.target in ("pred", "label") else spec.target,
                      "foil": foil, "foil_class": spec.foil, "score": spec.score,
                      "batch_size": spec.batch_size,
                      "chunk_items": spec.chunk_items, "cam_dtype": spec.cam_dtype,
                      "metrics": list(spec.metrics),
                      "labels_sha256": None if labels is None
                      else hashlib.sha256(labels.tobytes()).hexdigest(),
                      "preprocess": asdict(data.preprocess)
                      if data.kind == "folder" else None,
                      **({"input": spec.input} if spec.input else {})},
        "versions": {"onnx_cam": __version__, "onnxruntime": onnxruntime.__version__,
                     "onnx": onnx.__version__, "numpy": np.__version__},
    }
    return json.loads(json.dumps(identity))


def _prepare_store(spec: AuditSpec, identity: dict, explainer: Explainer,
                   overwrite: bool) -> str:
    """The audit's store, created or checked to be this job's; returns its run id."""
    return prepare_store(
        spec.store, identity, overwrite, "an audit",
        lambda: {"maps": [{"method": m, "layer": layer, "cams": map_path("cams", m, layer),
                           "score_range": map_path("score_range", m, layer)}
                          for m, layer in spec.maps],
                 "classes": explainer.num_classes, "class_names": explainer.class_names,
                 "head": explainer.head, "items": len(spec.dataset), "chunks": spec.chunks},
        lambda group: _create_arrays(group, spec, explainer))


def prepare_store(url: str, identity: dict, overwrite: bool, job: str,
                  manifest_fields: Callable[[], dict],
                  create_arrays: Callable[[object], None]) -> str:
    """Create the store of a job (`job`: "an audit", "a comparison"), or check that an
    existing one belongs to this job (same identity), and bring it to "running" in the order
    store.py describes (every step safe to cut short by a kill). Returns its run id."""
    import zarr
    state = store_state(url)
    manifest = None
    if state == "audit":
        manifest = AuditStore(url).manifest
        diffs = identity_differences(manifest["identity"], identity)
        if diffs and not overwrite:
            raise StoreError(
                f"{url!r} holds {job} of another model, dataset or arguments:\n  "
                + "\n  ".join(diffs) + "\nUse the same command to resume it, another store "
                "path, or overwrite=True (--overwrite) to replace it.")
        manifest = None if diffs else manifest
    elif state == "other" and not overwrite:
        raise StoreError(f"{url!r} exists and is not {job} store; choose another "
                         "path, or pass overwrite=True (--overwrite) to replace it.")
    if manifest is None:  # a new store: its manifest first, so the folder is this job's
        discard_root(url)
        manifest = {"identity": identity, "run_id": uuid.uuid4().hex, "status": "creating",
                    **manifest_fields(), "started_at": _now(), "finished_at": None,
                    "sessions": [_session()]}
        group = zarr.create_group(url, attributes={MANIFEST_KEY: manifest})
    else:
        group = zarr.open_group(url, mode="r+")
        _update_manifest(group, sessions=[*manifest["sessions"], _session()])
    if manifest["status"] == "creating":  # new, or its creation was cut short: (re)create
        clear_store(url)
        create_arrays(group)
        repair_group_metadata(url)
        _update_manifest(group, status="running")
    else:
        remove_partial_files(url)
        repair_group_metadata(url)
    return manifest["run_id"]


def _create_arrays(group, spec: AuditSpec, explainer: Explainer) -> None:
    n, k, step = len(spec.dataset), explainer.num_classes, spec.chunk_items
    item = spec.dataset.shape[1:]
    spatial = tuple(item if explainer.model.tokens else
                    item[:-1] if explainer.model.channels_last else item[1:])
    arrays = {"logits": ((n, k), "float32", np.nan), "probs": ((n, k), "float32", np.nan),
              "predicted": ((n,), "int64", -1), "target": ((n,), "int64", -1),
              "failed": ((n,), "bool", False), "error": ((n,), str, ""),
              "flags": ((n,), "uint8", 0)}
    if spec.foil is not None:
        arrays["foil"] = ((n,), "int64", -1)
    if spec.labels is not None:
        arrays["label"] = ((n,), "int64", -1)
    for name, (shape, dtype, fill) in arrays.items():
        group.create_array(name, shape=shape, dtype=dtype, chunks=(step, *shape[1:]),
                           fill_value=fill)
    item_bytes = int(np.prod(spatial)) * np.dtype(spec.cam_dtype).itemsize
    cam_chunk = cam_chunk_items(step, item_bytes)
    for method, layer in spec.maps:
        group.create_array(map_path("cams", method, layer), shape=(n, *spatial),
                           dtype=spec.cam_dtype, chunks=(cam_chunk, *spatial), fill_value=0)
        group.create_array(map_path("score_range", method, layer), shape=(n, 2),
                           dtype="float32", chunks=(step, 2), fill_value=np.nan)
        for name in spec.metrics:
            group.create_array(map_path(f"metrics/{name}", method, layer), shape=(n,),
                               dtype="float32", chunks=(step,), fill_value=np.nan)
    group.create_array("chunk_done", shape=(spec.chunks,), dtype="uint8", chunks=(1,),
                       fill_value=0)


def _update_manifest(group, **fields) -> None:
    manifest = dict(group.attrs[MANIFEST_KEY])
    manifest.update(fields)
    group.attrs[MANIFEST_KEY] = manifest


def _session() -> dict:
    return {"started_at": _now(), "host": platform.node(), "pid": os.getpid(),
            "command": sys.argv}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
