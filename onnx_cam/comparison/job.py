"""The comparison job: every method x metric over a dataset, for one or several models.

It is an audit job's sibling (onnx_cam.audit): the dataset forms, the store's write order, lock
and identity check, the chunk marks and the Dask loop are the audit's. A task is one model and
one chunk of items; its values are written first and its mark last, so a killed job redoes only
the tasks not marked.

    OUT/store.zarr                            a Zarr group; manifest under the audit's key, its
                                              identity says job "compare"
      chunk_done                              (models, chunks) uint8, a task's mark
      label                                   (N,) int64, with labels
      <model>/predicted, <model>/target       (N,) int64 (-1: failed item)
      <model>/failed, <model>/error           (N,) bool, str
      <model>/disagreement                    (N,) float64: 1 - mean pairwise Spearman
                                              correlation of the methods' maps
      <model>/values/<method>/<metric>        (N,) float64, onnx_cam.metrics.evaluate's value
      <model>/method_cost/<method>            (chunks, 2) float64: seconds, inputs run
      <model>/metric_cost/<method>/<metric>   (chunks, 2) float64
    OUT/comparison.parquet, .csv, .html       written once every task is done

Each method is explained alone (one explain call per method and chunk) and each metric is
evaluated alone, so the seconds and the inputs run (onnx_cam.runtime.counting_inputs) of each
are its own; the sessions of a (model, method) and a (model, metric) are built on one item
before the first timed chunk of a process, so building them is not counted.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, replace
from itertools import combinations
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from .. import __version__
from ..audit import job as audit_job
from ..audit.chunks import Chunked, Counter, run_on_dask
from ..audit.datasets import Dataset, open_dataset, read_labels
from ..audit.models import keep_explainer, open_model, worker_explainer
from ..audit.store import (
    MANIFEST_KEY,
    STORE_FORMAT,
    AuditStore,
    StoreLock,
    done_chunks,
    job_arrays,
    node_name,
    prepare_store,
    remove_partial_files,
    repair_group_metadata,
    update_manifest,
    utc_now,
    writing,
)
from ..errors import InputError, MethodError
from ..explanation import INPUT
from ..inputs import preprocess_for
from ..methods import get_method
from ..metrics import METRICS, MetricError, Options, evaluate, spearman
from ..numerics import NumericsWarning, describe_flags
from ..progress import progress_bar
from ..runtime import RuntimeOptions, counting_inputs

STORE, TABLE, CSV, PAGE = "store.zarr", "comparison.parquet", "comparison.csv", "comparison.html"
# (model sha, item shape, method[, metric]) whose sessions this process has built
_WARM: set[tuple] = set()


@dataclass(frozen=True)
class ModelRef:
    """One model of the job; what audit's worker-side Explainer cache needs, and more."""

    name: str
    model: str | bytes  # a path the workers can read, or the model's bytes (local jobs)
    model_sha256: str
    runtime: RuntimeOptions
    layer: str
    target: str | int  # "pred", "label" or a class index of this model


@dataclass(frozen=True)
class CompareSpec(Chunked):
    """What a worker needs to process one (model, chunk) task; picklable."""

    models: tuple[ModelRef, ...]
    dataset: Dataset
    store: str
    run_id: str
    methods: tuple[str, ...]
    metrics: tuple[str, ...]
    metric_options: dict
    score: str
    batch_size: int
    chunk_items: int
    labels: np.ndarray | None

    def layer_of(self, ref: ModelRef, method: str) -> str:
        """The layer a method's map is under: "input" for input attributions."""
        return INPUT if get_method(method).level == "input" else ref.layer


@dataclass(frozen=True)
class Comparison:
    """What a comparison job wrote: the store's path (a Zarr group, see the module's docstring)
    and the table, CSV and page paths."""

    store: str
    table_path: Path
    csv_path: Path
    page_path: Path

    def table(self):
        """The table (pyarrow.Table): one row per model x item x method x metric."""
        import pyarrow.parquet as pq
        return pq.read_table(self.table_path)


def compare(models, dataset, out, *, methods=("gradcam",), metrics=("deletion",),
            layer="auto", target="pred", labels=None, key: str | None = None,
            preprocess=None, score: str = "logits", metric_options: dict | None = None,
            batch_size: int = 64, chunk_items: int = 256, overwrite: bool = False,
            scheduler: str | None = None, workers: int | None = None,
            runtime: RuntimeOptions | None = None, disagreements: int = 6,
            progress: bool = True) -> Comparison:
    """Every method x metric over every item of `dataset`, for each model; writes
    OUT/comparison.parquet and .csv (one row per model x item x method x metric: the value,
    the method's and the metric's seconds and inputs run per item) and OUT/comparison.html.

    models: an .onnx path, a list of them (named by their file stems), or {name: model} where a
    model is a path, ONNX bytes, a ModelProto or an Explainer. dataset, labels, key,
    preprocess, target, score, batch_size, chunk_items, scheduler, workers: as
    onnx_cam.audit.run. methods: names of CAMs (explained at `layer`: "auto" is each model's
    deepest candidate; a name for every model, or {model name: layer}) and input
    attributions. metrics: names of onnx_cam.metrics.evaluate, given metric_options (JSON
    values: score, step, baseline, ...; batch_size defaults to this job's). Each metric reads
    the method's map as res.cam gives it: a CAM upsampled to the input, an attribution as
    |sum over channels|, both scaled to [0, 1] per item. Running the same call again resumes
    an interrupted job; a store of another job is refused with the differences unless
    overwrite=True. disagreements: how many items the page shows with their maps.
    """
    if chunk_items < 1 or batch_size < 1:
        raise InputError("chunk_items and batch_size must be >= 1.")
    if scheduler is not None and workers is not None:
        raise InputError("Give either scheduler= (an existing Dask cluster) or workers= (start "
                         "a local one), not both.")
    # canonical names (an unknown one lists the known ones)
    method_names = list(dict.fromkeys(get_method(m).name for m in _names(methods, "method")))
    metric_names = _names(metrics, "metric")
    unknown = [m for m in metric_names if m not in METRICS]
    if unknown:
        raise MetricError(f"Unknown metric(s) {unknown}; known: {', '.join(METRICS)}.")
    options = {"batch_size": batch_size, **(metric_options or {})}
    Options.from_kwargs(options)  # an unknown option or value fails before anything runs
    try:
        json.dumps(options, allow_nan=False)
    except (TypeError, ValueError):
        raise InputError("metric_options must be JSON values (numbers, strings, lists) so a "
                         "resumed job can check them; give arrays as lists.") from None
    opened = _open_models(models, runtime)
    first = next(iter(opened.values()))[0]
    if preprocess is None or isinstance(preprocess, dict):
        preprocess = replace(preprocess_for(first), **(preprocess or {}))
    data = open_dataset(dataset, key=key, item_shape=first.model.input_shape[1:],
                        preprocess=preprocess)
    if len(data) == 0:
        raise InputError("The dataset holds no items.")
    label_array = read_labels(labels, len(data), first.class_names)
    sample = np.nan_to_num(data.read(0, 1).x)
    refs, explainers = [], {}
    for name, (explainer, model_ref, sha) in opened.items():
        explainer.check_input(sample)  # every model takes the dataset's items
        audit_job.check_targets(target, label_array, explainer.num_classes)
        chosen = _layer_for(name, layer, explainer)
        explainer.model.resolve_layer(chosen)
        resolved = (target if target in ("pred", "label")
                    else audit_job.class_index(explainer, target=target))
        refs.append(ModelRef(name, model_ref, sha, explainer.runtime, chosen, resolved))
        explainers[name] = explainer
    distributed = scheduler is not None or workers is not None
    if distributed and data.kind == "array":
        raise InputError("An in-memory array cannot be sent to a Dask cluster chunk by chunk; "
                         "save it as a .npy file or a Zarr array first.")
    if distributed and any(isinstance(r.model, bytes) for r in refs):
        raise InputError("Dask workers load the models from files: pass .onnx paths "
                         "(Explainer.save_model writes one).")

    out = Path(out)
    url = os.fspath(out / STORE)
    spec = CompareSpec(tuple(refs), data, url, "", tuple(method_names), tuple(metric_names),
                       options, score, batch_size, chunk_items, label_array)
    identity = _identity(spec, explainers, target)
    with StoreLock(url):
        with writing(url, "Preparing the store"):
            run_id = _prepare_store(spec, identity, overwrite)
        spec = replace(spec, run_id=run_id)
        for ref in refs:
            keep_explainer(ref, explainers[ref.name])
        group = AuditStore(url, mode="r+").group
        marks = done_chunks(group)
        todo = [(m, c) for m in range(len(refs)) for c in range(spec.chunks) if not marks[m, c]]
        if todo:
            remaining = sum(stop - start for start, stop in (spec.bounds(c) for _, c in todo))
            total = len(data) * len(refs)
            with progress_bar("compare", enabled=progress) as update:
                done = Counter(total - remaining, total, update)
                if distributed:
                    run_on_dask(spec, todo, done, scheduler, workers, process_task)
                else:
                    for task in todo:
                        done.add(process_task(spec, task))
        paths = out / TABLE, out / CSV, out / PAGE
        if group.attrs[MANIFEST_KEY].get("status") != "complete" or not all(
                p.exists() for p in paths):
            from .page import write_page
            from .table import write_tables
            with writing(url, "Writing the table and the page"):
                table = write_tables(group, spec, paths[0], paths[1])
                write_page(paths[2], table, group, spec, explainers, disagreements)
                repair_group_metadata(url)
                update_manifest(group, status="complete", finished_at=utc_now())
        remove_partial_files(url)
    return Comparison(url, *paths)


def process_task(spec: CompareSpec, task: tuple[int, int]) -> int:
    """Explain one chunk with one model, every method then every metric, and write it to the
    store, its mark last. Returns its items."""
    index, chunk = task
    ref = spec.models[index]
    explainer = worker_explainer(ref)
    start, stop = spec.bounds(chunk)
    read = spec.dataset.read_finite(start, stop)
    x, failures = read.x, read.failures
    targets = (None if ref.target == "pred" else
               spec.labels[start:stop].tolist() if ref.target == "label" else ref.target)
    prefix = node_name(ref.name)
    values, maps = {}, []
    for method in spec.methods:
        layer = spec.layer_of(ref, method)

        def explain(rows, targets, method=method):
            return explainer.explain(x[rows], targets=targets, layers=[ref.layer],
                                     methods=[method], score=spec.score,
                                     batch_size=spec.batch_size)

        def scores(rows, res, metric, method=method, layer=layer):
            return evaluate(explainer, x[rows], res, metric, method=method, layer=layer,
                            **spec.metric_options)[metric]

        with warnings.catch_warnings():  # the store keeps the failures instead
            warnings.simplefilter("ignore", NumericsWarning)
            warm = (ref.model_sha256, x.shape[1:], method)
            cold = [m for m in spec.metrics if (*warm, m) not in _WARM]
            if warm not in _WARM or cold:  # build the sessions on one item, untimed
                first = targets if targets is None or isinstance(targets, int) else targets[:1]
                res = explain(slice(0, 1), first)
                for metric in cold:
                    scores(slice(0, 1), res, metric)
                _WARM.update([warm, *((*warm, m) for m in cold)])
            res, values[f"{prefix}/method_cost/{method}"] = _timed(explain, slice(None),
                                                                    targets)
            for metric in spec.metrics:
                values[f"{prefix}/values/{method}/{metric}"], \
                    values[f"{prefix}/metric_cost/{method}/{metric}"] = _timed(
                        scores, slice(None), res, metric)
        for i in np.flatnonzero(res.flags & audit_job.NAN_MAPS):
            failures.setdefault(int(i), f"{method}: " + "; ".join(describe_flags(res.flags[i])))
        maps.append(res.cam(method, layer))
    failed = np.zeros(len(x), bool)
    failed[sorted(failures)] = True
    values[f"{prefix}/predicted"] = np.where(failed, -1, res.predicted)
    values[f"{prefix}/target"] = np.where(failed, -1, res.targets)
    values[f"{prefix}/failed"] = failed
    values[f"{prefix}/error"] = np.array([failures.get(i, "") for i in range(len(x))], str)
    values[f"{prefix}/disagreement"] = disagreement(maps)
    if spec.labels is not None:
        values["label"] = spec.labels[start:stop]
    group = job_arrays(spec.store, spec.run_id)
    with writing(spec.store, f"Writing model {ref.name!r}, chunk {chunk} (items "
                             f"{start}-{stop - 1})"):
        for name, value in values.items():
            if "_cost/" in name:
                group[name][chunk] = value
                continue
            if failed.any() and value.dtype.kind == "f":
                value = np.where(failed, np.nan, value)
            group[name][start:stop] = value
        group["chunk_done"][index, chunk] = 1
    return stop - start


def _timed(call, *args):
    """call(*args), its seconds and the inputs it ran (every thread's)."""
    with counting_inputs() as count:
        began = time.perf_counter()
        result = call(*args)
        seconds = time.perf_counter() - began
    return result, np.array([seconds, count[0]], np.float64)


def disagreement(maps: list[np.ndarray]) -> np.ndarray:
    """(rows,) 1 - the mean Spearman correlation over every pair of methods' maps; NaN with
    one method, or where every pair has a constant map."""
    rows = len(maps[0])
    pairs = [spearman(a.astype(np.float64), b.astype(np.float64))
             for a, b in combinations(maps, 2)]
    if not pairs:
        return np.full(rows, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN
        return 1.0 - np.nanmean(np.stack(pairs), axis=0)


def _names(given, what: str) -> list[str]:
    names = [given] if isinstance(given, str) else list(given)
    if not all(isinstance(n, str) for n in names):
        raise MethodError(f"compare takes {what} names (they are the table's columns and "
                          "what a resumed job checks); configured instances are not taken.")
    if not names:
        raise InputError(f"Give at least one {what}.")
    return list(dict.fromkeys(names))


def _open_models(models, runtime) -> dict:
    """{name: (Explainer, what workers load, SHA-256)}; paths are named by their stems."""
    if isinstance(models, dict):
        named = dict(models)
    else:
        items = [models] if isinstance(models, (str, os.PathLike, bytes)) else list(models)
        named = {}
        for model in items:
            if not isinstance(model, (str, os.PathLike)):
                raise InputError("Models given as bytes, ModelProto or Explainer need names: "
                                 "pass {name: model}.")
            stem = Path(model).stem
            if stem in named:
                raise InputError(f"Two models are named {stem!r} (their file stems); rename one "
                                 "file, or pass {name: path}.")
            named[stem] = model
    if not named:
        raise InputError("Give at least one model.")
    return {name: open_model(m, None, runtime) for name, m in named.items()}


def _layer_for(name: str, layer, explainer) -> str:
    chosen = layer.get(name, "auto") if isinstance(layer, dict) else layer
    return explainer.layers[0] if chosen == "auto" else chosen


def _identity(spec: CompareSpec, explainers: dict, target) -> dict:
    """What must match for a store to be resumed by this job (as JSON gives it back)."""
    models = []
    for ref in spec.models:
        explainer = explainers[ref.name]
        opsets = {i.domain or "ai.onnx": i.version for i in explainer.model.proto.opset_import}
        models.append({"name": ref.name, "sha256": ref.model_sha256,
                       "opset": opsets.get("ai.onnx"),
                       "source": ref.model if isinstance(ref.model, str) else "<bytes>",
                       "classes": explainer.num_classes, "class_names": explainer.class_names,
                       "layer": ref.layer, "target_class": ref.target})
    data = spec.dataset
    identity = {
        "format": STORE_FORMAT, "job": "compare", "models": models,
        "dataset": data.describe(),
        "arguments": {"methods": list(spec.methods), "metrics": list(spec.metrics),
                      "metric_options": spec.metric_options, "target": target,
                      "score": spec.score, "batch_size": spec.batch_size,
                      "chunk_items": spec.chunk_items,
                      "labels_sha256": None if spec.labels is None
                      else hashlib.sha256(spec.labels.tobytes()).hexdigest(),
                      "preprocess": asdict(data.preprocess) if data.kind == "folder" else None},
        "versions": {"onnx_cam": __version__, "onnxruntime": onnxruntime.__version__,
                     "onnx": onnx.__version__, "numpy": np.__version__},
    }
    return json.loads(json.dumps(identity))


def _prepare_store(spec: CompareSpec, identity: dict, overwrite: bool) -> str:
    """The comparison's store, created or checked to be this job's, as an audit's."""
    return prepare_store(
        spec.store, identity, overwrite, "a comparison",
        lambda: {"maps": [], "items": len(spec.dataset), "chunks": spec.chunks},
        lambda group: _create_arrays(group, spec))


def _create_arrays(group, spec: CompareSpec) -> None:
    n, step, chunks = len(spec.dataset), spec.chunk_items, spec.chunks
    arrays = {}
    if spec.labels is not None:
        arrays["label"] = ((n,), "int64", -1)
    for ref in spec.models:
        prefix = node_name(ref.name)
        arrays.update({f"{prefix}/predicted": ((n,), "int64", -1),
                       f"{prefix}/target": ((n,), "int64", -1),
                       f"{prefix}/failed": ((n,), "bool", False),
                       f"{prefix}/error": ((n,), str, ""),
                       f"{prefix}/disagreement": ((n,), "float64", np.nan)})
        for method in spec.methods:
            arrays[f"{prefix}/method_cost/{method}"] = ((chunks, 2), "float64", np.nan)
            for metric in spec.metrics:
                arrays[f"{prefix}/values/{method}/{metric}"] = ((n,), "float64", np.nan)
                arrays[f"{prefix}/metric_cost/{method}/{metric}"] = ((chunks, 2), "float64",
                                                                     np.nan)
    for name, (shape, dtype, fill) in arrays.items():
        rows = 1 if "_cost/" in name else step
        group.create_array(name, shape=shape, dtype=dtype, chunks=(rows, *shape[1:]),
                           fill_value=fill)
    group.create_array("chunk_done", shape=(len(spec.models), chunks), dtype="uint8",
                       chunks=(1, 1), fill_value=0)
