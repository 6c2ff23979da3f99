"""Audit jobs: explain a whole dataset chunk by chunk into an audit store; resumable after
a kill, on one process or a Dask cluster, with the same store either way."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass, replace

import numpy as np
import onnx
import onnxruntime

from .. import __version__
from ..errors import InputError, TargetError
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
from .chunks import Chunked, Counter, run_on_dask
from .datasets import Dataset, open_dataset, open_inputs, read_labels
from .models import keep_explainer, open_model, worker_explainer
from .store import (
    MANIFEST_KEY,
    STORE_FORMAT,
    AuditStore,
    StoreLock,
    cam_chunk_items,
    done_chunks,
    job_arrays,
    map_path,
    prepare_store,
    remove_partial_files,
    repair_group_metadata,
    update_manifest,
    utc_now,
    writing,
)

CAM_DTYPES = ("float16", "float32")
# Rows whose maps are NaN: recorded as failed (left out of the statistics).
NAN_MAPS = (RowFlag.SCORE_NONFINITE | RowFlag.ACTIVATION_NONFINITE | RowFlag.GRADIENT_NONFINITE
            | RowFlag.MAP_NONFINITE)


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
    explainer, model_ref, sha = open_model(model, class_names, runtime)
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
    check_targets(target, label_array, explainer.num_classes)
    target_class = None if target in ("pred", "label") else class_index(explainer, target=target)
    foil_class = None if foil is None else class_index(explainer, foil=foil)
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
        keep_explainer(spec, explainer)
        group = AuditStore(url, mode="r+").group
        todo = [c for c, done in enumerate(done_chunks(group)) if not done]
        if todo:
            remaining = sum(stop - start for start, stop in map(spec.bounds, todo))
            with progress_bar("audit", enabled=progress) as update:
                done = Counter(len(data) - remaining, len(data), update)
                if distributed:
                    run_on_dask(spec, todo, done, scheduler, workers, process_chunk)
                else:
                    for chunk in todo:
                        done.add(process_chunk(spec, chunk))
        if group.attrs[MANIFEST_KEY].get("status") != "complete":
            with writing(url, "Writing the statistics and the summary"):
                stats.write_statistics(group, spec, explainer.num_classes)
                stats.write_summary(url, group, spec)
                repair_group_metadata(url)
                update_manifest(group, status="complete", finished_at=utc_now(),
                                 failed_items=int(np.count_nonzero(group["failed"][:])),
                                 flagged_items=int(np.count_nonzero(group["flags"][:])))
        remove_partial_files(url)
    return AuditStore(url)


def process_chunk(spec: AuditSpec, chunk: int) -> int:
    """Explain one chunk and write it to the store, its done mark last. Returns its items."""
    explainer = worker_explainer(spec)
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
    arrays = job_arrays(spec.store, spec.run_id)
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


def check_targets(target, labels, classes: int) -> None:
    """A TargetError for target="label" without labels, or labels outside the classes."""
    if target == "label":
        if labels is None:
            raise TargetError("target='label' explains each item's true class: give labels= "
                              "(CLI: --labels FILE).")
    if labels is not None and ((labels < 0) | (labels >= classes)).any():
        bad = labels[(labels < 0) | (labels >= classes)][:5].tolist()
        raise TargetError(f"Labels {bad} are outside the model's {classes} classes.")


def class_index(explainer: Explainer, *, target=None, foil=None) -> int:
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
