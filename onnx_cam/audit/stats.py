"""Dataset statistics and the summary table of a finished audit, computed from the stored maps
in item order (so a resumed or distributed job gets the same bits as a single run).

    stats/<by>/count                  (K,) items per class, by = "label" | "predicted"
    stats/<by>/mean/<method>/<layer>  (K, *input_spatial) float32 mean CAM per class
    stats/<by>/std/<method>/<layer>   (K, *input_spatial) float32 standard deviation
    stats/confusion                   (K, K) int64 label x predicted counts (with labels)
    distance/<method>/<layer>         (N,) float32 RMS distance of each item's map from the
                                      mean map of its class (its label, else its prediction)
(The per-item metrics/<name>/<method>/<layer> arrays are written with the chunks.)
Failed items are left out of every statistic (their distance is NaN).
"""

from __future__ import annotations

import numpy as np

from ..metrics import ClassStatistics
from .store import map_path, write_parquet_atomic


def _groupings(group) -> list[str]:
    return (["label"] if "label" in group else []) + ["predicted"]


def _chunks(spec):
    for chunk in range(spec.chunks):
        yield spec.bounds(chunk)


def write_statistics(group, spec, classes: int) -> None:
    failed = np.asarray(group["failed"][:])
    by = {name: np.asarray(group[name][:]) for name in _groupings(group)}
    for name, classes_of in by.items():
        count = np.bincount(classes_of[~failed], minlength=classes)[:classes]
        _write(group, f"stats/{name}/count", count.astype(np.int64))
    if "label" in by:
        ok = ~failed
        confusion = np.zeros((classes, classes), np.int64)
        np.add.at(confusion, (by["label"][ok], by["predicted"][ok]), 1)
        _write(group, "stats/confusion", confusion)
    reference = by.get("label", by["predicted"])
    for method, layer in spec.maps:
        cams = group[map_path("cams", method, layer)]
        moments = {name: ClassStatistics() for name in by}
        for start, stop in _chunks(spec):
            ok = ~failed[start:stop]
            maps = np.asarray(cams[start:stop])[ok]
            for name, classes_of in by.items():
                moments[name].add(maps, classes_of[start:stop][ok])
        for name, stats in moments.items():
            mean, std = (np.full((classes, *cams.shape[1:]), np.nan, np.float32)
                         for _ in range(2))
            for k in stats.classes:
                mean[k], std[k] = stats.mean(k), stats.std(k)
            _write(group, map_path(f"stats/{name}/mean", method, layer), mean)
            _write(group, map_path(f"stats/{name}/std", method, layer), std)
        anchor = moments["label" if "label" in by else "predicted"]
        distance = np.full(len(failed), np.nan, np.float32)
        for start, stop in _chunks(spec):
            ok = ~failed[start:stop]
            if ok.any():
                distance[start:stop][ok] = anchor.distance(np.asarray(cams[start:stop])[ok],
                                                           reference[start:stop][ok])
        _write(group, map_path("distance", method, layer), distance)


def _write(group, name: str, value: np.ndarray) -> None:
    """(Re)write a whole statistics array."""
    if name in group:
        del group[name]
    array = group.create_array(name, shape=value.shape, dtype=value.dtype,
                               chunks=value.shape or (1,), fill_value=0)
    array[...] = value


def write_summary(url: str, group, spec) -> None:
    """STORE/summary.parquet: one row per item, for analysts (pandas, DuckDB, Spark)."""
    import pyarrow as pa
    n = len(spec.dataset)
    probs = np.asarray(group["probs"][:])
    predicted = np.asarray(group["predicted"][:])
    target = np.asarray(group["target"][:])
    rows = np.arange(n)
    columns = {"item": rows}
    names = [spec.dataset.item_names(start, stop) for start, stop in _chunks(spec)]
    if names[0] is not None:
        columns["name"] = [name for part in names for name in part]
    if "label" in group:
        columns["label"] = np.asarray(group["label"][:])
    columns["predicted"] = predicted
    columns["target"] = target
    if "foil" in group:
        columns["foil"] = np.asarray(group["foil"][:])
    ok = predicted >= 0
    columns["p_predicted"] = np.where(ok, probs[rows, np.maximum(predicted, 0)], np.nan)
    columns["p_target"] = np.where(ok, probs[rows, np.maximum(target, 0)], np.nan)
    columns["failed"] = np.asarray(group["failed"][:])
    columns["error"] = np.asarray(group["error"][:]).astype(object)
    columns["flags"] = np.asarray(group["flags"][:])
    for method, layer in spec.maps:
        prefix = f"{method}@{layer}"
        ranges = np.asarray(group[map_path("score_range", method, layer)][:])
        columns[f"{prefix}:score_min"] = ranges[:, 0]
        columns[f"{prefix}:score_max"] = ranges[:, 1]
        columns[f"{prefix}:distance"] = np.asarray(group[map_path("distance", method, layer)][:])
        for name in spec.metrics:
            columns[f"{prefix}:{name}"] = np.asarray(
                group[map_path(f"metrics/{name}", method, layer)][:])
    write_parquet_atomic(url, pa.table({k: pa.array(v) for k, v in columns.items()}))
