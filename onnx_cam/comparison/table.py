"""The comparison table: one row per model x item x method x metric, from a finished store.

Columns: model, item, name (folders: the file), label (with labels), predicted, target,
failed, method, layer, metric, better ("higher" / "lower" / "" from
onnx_cam.metrics.directions), value, and per item the method's and the metric's cost:
method_seconds, method_passes, metric_seconds, metric_passes (the chunk's seconds and inputs
run, divided by its items).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..audit.store import node_name
from ..files import write_atomic
from ..metrics.directions import BETTER


def per_item_cost(cost: np.ndarray, spec) -> np.ndarray:
    """(chunks, 2) seconds and inputs per chunk -> (N, 2) per item (the chunk's share)."""
    out = np.empty((len(spec.dataset), 2))
    for chunk in range(spec.chunks):
        start, stop = spec.bounds(chunk)
        out[start:stop] = cost[chunk] / (stop - start)
    return out


def build_table(group, spec):
    import pyarrow as pa
    n = len(spec.dataset)
    names = [name for chunk in range(spec.chunks)
             for name in (spec.dataset.item_names(*spec.bounds(chunk)) or [])]
    pairs = [(method, metric) for method in spec.methods for metric in spec.metrics]
    parts = []
    for ref in spec.models:
        prefix = node_name(ref.name)
        columns: dict[str, np.ndarray | list] = {
            "model": np.full(n, ref.name, object), "item": np.arange(n)}
        if names:
            columns["name"] = np.array(names, object)
        if spec.labels is not None:
            columns["label"] = np.asarray(group["label"][:])
        for field in ("predicted", "target", "failed"):
            columns[field] = np.asarray(group[f"{prefix}/{field}"][:])
        per_item = {key: np.repeat(value, len(pairs)) for key, value in columns.items()}
        method_cost = {m: per_item_cost(np.asarray(group[f"{prefix}/method_cost/{m}"][:]), spec)
                       for m in spec.methods}
        rows = {"method": [], "layer": [], "metric": [], "better": [], "value": [],
                "method_seconds": [], "method_passes": [], "metric_seconds": [],
                "metric_passes": []}
        for method, metric in pairs:
            metric_cost = per_item_cost(
                np.asarray(group[f"{prefix}/metric_cost/{method}/{metric}"][:]), spec)
            for key, value in (("method", method), ("layer", spec.layer_of(ref, method)),
                               ("metric", metric), ("better", BETTER.get(metric, ""))):
                rows[key].append(np.full(n, value, object))
            rows["value"].append(np.asarray(group[f"{prefix}/values/{method}/{metric}"][:]))
            rows["method_seconds"].append(method_cost[method][:, 0])
            rows["method_passes"].append(method_cost[method][:, 1])
            rows["metric_seconds"].append(metric_cost[:, 0])
            rows["metric_passes"].append(metric_cost[:, 1])
        # item-major order: rows of one item together, methods then metrics within it
        stacked = {key: np.stack(value, axis=1).reshape(-1) for key, value in rows.items()}
        parts.append(pa.table({**per_item, **stacked}))
    return pa.concat_tables(parts)


def write_tables(group, spec, parquet: Path, csv: Path):
    """Write the table as Parquet and CSV (each whole or not at all); returns it."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq
    table = build_table(group, spec)
    write_atomic(parquet, lambda handle: pq.write_table(table, handle))
    write_atomic(csv, lambda handle: pcsv.write_csv(table, handle))
    return table
