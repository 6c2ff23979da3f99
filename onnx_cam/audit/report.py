"""`onnx-cam report`: one self-contained HTML page about a finished audit (figures embedded as
PNG data URIs, no script, no external file): the run, predictions and confidences, per-class
mean / std CAMs, and the items whose maps differ most from their class mean."""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..errors import StoreError
from ..files import write_atomic
from . import html_page
from .store import AuditStore, map_path

MAX_CLASSES_SHOWN = 12  # the most frequent classes, for datasets with many classes


def write_report(store: str | os.PathLike | AuditStore, out: str | os.PathLike, *,
                 outliers: int = 8) -> Path:
    """Write the report of the audit store `store` to `out` (whole or not at all)."""
    audit = store if isinstance(store, AuditStore) else AuditStore(store)
    if audit.manifest["identity"].get("job") == "compare":
        raise StoreError(f"{audit.url!r} is the store of an onnx-cam compare job, not an audit; "
                         "its page is comparison.html in the folder above it.")
    if not audit.complete:
        raise StoreError(f"The audit in {audit.url!r} has not finished; run the same audit "
                         "command again to finish it, then make the report.")
    manifest = audit.manifest
    names = _class_names(manifest)
    sections = [_overview(audit, manifest), _predictions(audit, names)]
    for method, layer in audit.maps:
        sections.append(_class_maps(audit, method, layer, names))
        sections.append(_outliers(audit, method, layer, names, outliers))
    page = html_page.page(f"onnx-cam audit: {audit.url}", sections)
    out = Path(out)
    write_atomic(out, lambda handle: handle.write(page.encode("utf-8")))
    return out


def _class_names(manifest: dict) -> list[str]:
    names = manifest.get("class_names")
    return list(names) if names else [str(k) for k in range(manifest["classes"])]


def _overview(audit: AuditStore, manifest: dict) -> str:
    identity = manifest["identity"]
    failed = np.asarray(audit["failed"][:])
    rows = [["items", manifest["items"]], ["failed items", int(failed.sum())],
            ["model", identity["model"]["source"]],
            ["model SHA-256", identity["model"]["sha256"]],
            ["dataset", identity["dataset"]["source"]],
            ["maps", ", ".join(f"{m} @ {layer}" for m, layer in audit.maps)],
            ["target", identity["arguments"]["target"]],
            ["started / finished", f"{manifest['started_at']} / {manifest['finished_at']}"],
            ["versions", ", ".join(f"{k} {v}" for k, v in identity["versions"].items())]]
    errors = [[i, str(audit["error"][i])] for i in np.flatnonzero(failed)[:20]]
    more = html_page.table(["item", "why it failed"], errors) if errors else ""
    return f"<h2>Run</h2>{html_page.table(None, rows)}{more}"


def _predictions(audit: AuditStore, names: list[str]) -> str:
    ok = ~np.asarray(audit["failed"][:])
    predicted = np.asarray(audit["predicted"][:])[ok]
    probs = np.asarray(audit["probs"][:])[ok]
    confidence = probs[np.arange(len(predicted)), predicted]
    fig = Figure(figsize=(10, 3.2), layout="constrained")
    bars, hist = fig.subplots(1, 2)
    counts = np.bincount(predicted, minlength=len(names))
    shown = np.argsort(-counts, kind="stable")[:MAX_CLASSES_SHOWN * 2]
    bars.bar([names[k] for k in shown], counts[shown], color="tab:blue", label="predicted")
    if "label" in audit.group:
        labels = np.bincount(np.asarray(audit["label"][:])[ok], minlength=len(names))
        bars.plot([names[k] for k in shown], labels[shown], "o", color="tab:red",
                  label="true")
        bars.legend()
    bars.set(title="Items per class", ylabel="items")
    bars.tick_params(axis="x", labelrotation=45)
    hist.hist(confidence, bins=20, range=(0, 1), color="tab:green")
    hist.set(title="Confidence of the predicted class", xlabel="probability", ylabel="items")
    parts = [f"<h2>Predictions</h2>{html_page.figure(fig)}"]
    if "stats/confusion" in audit.group:
        confusion = np.asarray(audit["stats/confusion"][:])
        accuracy = np.trace(confusion) / max(confusion.sum(), 1)
        keep = shown[:MAX_CLASSES_SHOWN]
        rows = [[names[i], *confusion[i, keep].tolist()] for i in keep]
        parts.append(f"<p>Accuracy {accuracy:.1%}. Confusion (rows: true class, columns: "
                     f"predicted):</p>{html_page.table(['', *[names[k] for k in keep]], rows)}")
    return "\n".join(parts)


def _class_maps(audit: AuditStore, method: str, layer: str, names: list[str]) -> str:
    by = "label" if "label" in audit.group else "predicted"
    count = np.asarray(audit[f"stats/{by}/count"][:])
    mean = audit[map_path(f"stats/{by}/mean", method, layer)]
    std = audit[map_path(f"stats/{by}/std", method, layer)]
    classes = [k for k in np.argsort(-count, kind="stable")[:MAX_CLASSES_SHOWN] if count[k]]
    fig, rows = _grid(len(classes), mean.ndim == 2)
    for row, k in zip(rows, classes):
        _draw_pair(row, np.asarray(mean[k]), np.asarray(std[k]),
                   f"{names[k]} (n={count[k]}): mean", "standard deviation", band=True)
    title = html.escape(f"{method} @ {layer}: mean and standard deviation of the CAM per "
                        f"{'true' if by == 'label' else 'predicted'} class")
    return f"<h2>{title}</h2>{html_page.figure(fig)}"


def _outliers(audit: AuditStore, method: str, layer: str, names: list[str], top: int) -> str:
    distance = np.asarray(audit[map_path("distance", method, layer)][:])
    order = np.argsort(-np.nan_to_num(distance, nan=-1.0), kind="stable")[:top]
    order = [i for i in order if np.isfinite(distance[i])]
    if not order:
        return ""
    by = "label" if "label" in audit.group else "predicted"
    classes_of = np.asarray(audit[by][:])
    mean = audit[map_path(f"stats/{by}/mean", method, layer)]
    cams = audit.cams(method, layer)
    probs = audit["probs"]
    predicted = np.asarray(audit["predicted"][:])
    table = html_page.table(["item", by, "predicted", "confidence", "distance"],
                            [[int(i), names[classes_of[i]], names[predicted[i]],
                              f"{float(probs[i][predicted[i]]):.3f}", f"{distance[i]:.4f}"]
                             for i in order])
    fig, rows = _grid(len(order), cams.ndim == 2)
    for row, i in zip(rows, order):
        _draw_pair(row, np.asarray(cams[i], np.float32), np.asarray(mean[classes_of[i]]),
                   f"item {i}", f"mean of class {names[classes_of[i]]}", band=False)
    heading = html.escape(f"{method} @ {layer}: the items whose maps differ most from their "
                          "class mean (RMS distance)")
    return f"<h2>{heading}</h2>{table}{html_page.figure(fig)}"


def _grid(rows: int, signals: bool):
    """One axes per row for 1D maps (both maps drawn together), two side by side otherwise."""
    fig = Figure(figsize=(10, (1.6 if signals else 2.2) * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, 1 if signals else 2, squeeze=False)
    return fig, axes


def _draw_pair(row, first: np.ndarray, second: np.ndarray, first_title: str,
               second_title: str, band: bool) -> None:
    """Two maps of one row. 1D: `first` as a curve with `second` as a +-band around it (band)
    or as a dashed reference curve; 2D: two images; 3D: the quarter, middle and three-quarter
    depth slices side by side."""
    if first.ndim == 1:
        ax, t = row[0], np.arange(len(first))
        ax.plot(t, first, color="tab:red", lw=1.2, label=first_title.split(": ")[-1])
        if band:
            ax.fill_between(t, first - second, first + second, color="tab:red", alpha=0.2,
                            label="+- " + second_title)
        else:
            ax.plot(t, second, "--", color="0.3", lw=1, label=second_title)
        ax.set(xlim=(0, len(first) - 1), xlabel="sample", title=first_title)
        ax.legend(fontsize=8, loc="upper right")
        return
    for ax, cam, title in zip(row, (first, second), (first_title, second_title)):
        if cam.ndim == 3:
            depth = cam.shape[0]
            cam = np.concatenate([cam[d] for d in (depth // 4, depth // 2, 3 * depth // 4)],
                                 axis=1)
        image = ax.imshow(cam, cmap="jet", aspect="auto")
        ax.figure.colorbar(image, ax=ax, fraction=0.04)
        ax.set(xticks=[], yticks=[])
        ax.set_title(title, fontsize=9)
