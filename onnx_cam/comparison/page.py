"""The comparison page: one self-contained HTML file (figures as PNG data URIs, no script, no
external file): the run; a radar chart per model; the means per method and metric; the metric
distributions per method; metric against cost; a per-class breakdown; and the items where the
methods' maps disagree most, with their maps side by side."""

from __future__ import annotations

import html
import warnings
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from ..audit import html_page
from ..audit.store import node_name
from ..files import write_atomic
from ..metrics.directions import BETTER

MAX_CLASSES_SHOWN = 12


def write_page(path: Path, table, group, spec, explainers: dict, disagreements: int) -> None:
    """Write OUT/comparison.html (whole or not at all)."""
    columns = {name: table.column(name).to_numpy(zero_copy_only=False)
               for name in table.column_names}
    means = _means(columns, spec)
    sections = [_overview(group, spec), _radar(means, spec, _spread(columns, spec)),
                _mean_table(means, spec),
                _distributions(columns, spec), _cost(columns, means, spec),
                _per_class(columns, group, spec, explainers)]
    sections += [_disagreement(group, spec, ref, explainers[ref.name], disagreements)
                 for ref in spec.models]
    page = html_page.page("onnx-cam: comparison of explanation methods", sections)
    write_atomic(path, lambda handle: handle.write(page.encode("utf-8")))


def _select(columns: dict, **equal) -> np.ndarray:
    keep = ~columns["failed"].astype(bool)
    for name, value in equal.items():
        keep &= columns[name] == value
    return keep


def _nanmean(values: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values)) if len(values) else float("nan")


def _means(columns: dict, spec) -> dict:
    """{(model, method, metric): (mean, standard error, items, method seconds, method passes,
    metric seconds, metric passes)} over the items that did not fail."""
    out = {}
    for ref in spec.models:
        for method in spec.methods:
            for metric in spec.metrics:
                keep = _select(columns, model=ref.name, method=method, metric=metric)
                values = columns["value"][keep].astype(np.float64)
                finite = values[np.isfinite(values)]
                sem = finite.std(ddof=1) / np.sqrt(len(finite)) if len(finite) > 1 else np.nan
                out[ref.name, method, metric] = (
                    _nanmean(values), sem, len(finite),
                    *(_nanmean(columns[c][keep]) for c in
                      ("method_seconds", "method_passes", "metric_seconds", "metric_passes")))
    return out


def _overview(group, spec) -> str:
    failed = {ref.name: int(np.count_nonzero(group[f"{node_name(ref.name)}/failed"][:]))
              for ref in spec.models}
    identity = group.attrs["onnx_cam_audit"]["identity"]
    rows = [["items", len(spec.dataset)], ["dataset", spec.dataset.source],
            *[[f"model {ref.name}", f"{identity['models'][i]['source']} (layer {ref.layer}, "
               f"{failed[ref.name]} failed items)"] for i, ref in enumerate(spec.models)],
            ["methods", ", ".join(spec.methods)],
            ["metrics", ", ".join(f"{m} ({BETTER.get(m, 'no direction')} is better)"
                                  if m in BETTER else f"{m} (no better direction)"
                                  for m in spec.metrics)],
            ["target", identity["arguments"]["target"]], ["score explained", spec.score],
            ["versions", ", ".join(f"{k} {v}" for k, v in identity["versions"].items())]]
    return f"<h2>Run</h2>{html_page.table(None, rows)}"


def normalised(means: dict, spec, spread: dict | None = None) -> tuple[list[str], dict]:
    """The metrics with a better direction, and {(model, method): [0..1 per metric]} where 1
    is the best end of that metric's axis and 0 the worst. An axis spans the means of every
    model and method, widened to spread[metric] = (low, high) when given (the items' 5th to
    95th percentiles: a difference of means much smaller than the items' spread stays small on
    the chart); 0.5 when it spans nothing."""
    axes = [m for m in spec.metrics if m in BETTER]
    scores = {(ref.name, method): [] for ref in spec.models for method in spec.methods}
    for metric in axes:
        values = np.array([means[model, method, metric][0] for model, method in scores])
        finite = values[np.isfinite(values)]
        bounds = [*finite, *(spread or {}).get(metric, ())]
        low, high = (min(bounds), max(bounds)) if bounds else (0.0, 0.0)
        span = high - low
        for key, value in zip(scores, values):
            unit = 0.5 if not span > 0 else (value - low) / span
            scores[key].append(1 - unit if BETTER[metric] == "lower" and span > 0 else unit)
    return axes, scores


def _spread(columns: dict, spec) -> dict:
    """{metric: (5th, 95th percentile)} of the items' values over every model and method."""
    out = {}
    for metric in spec.metrics:
        values = columns["value"][_select(columns, metric=metric)].astype(np.float64)
        values = values[np.isfinite(values)]
        if len(values):
            out[metric] = tuple(np.percentile(values, [5, 95]))
    return out


def _radar(means: dict, spec, spread: dict) -> str:
    axes, scores = normalised(means, spec, spread)
    left_out = [m for m in spec.metrics if m not in BETTER]
    note = (f" Left out (no better direction): {', '.join(left_out)}." if left_out else "")
    if not axes:
        return f"<h2>Radar</h2><p>No metric with a better direction.{html.escape(note)}</p>"
    models = [ref.name for ref in spec.models]
    if len(axes) < 3:  # a radar of one or two axes is a dot or a line: bars say the same
        fig = Figure(figsize=(4.2 * len(models), 0.5 + 0.5 * len(spec.methods) * len(axes)),
                     layout="constrained")
        for k, model in enumerate(models):
            ax = fig.add_subplot(1, len(models), k + 1)
            for j, metric in enumerate(axes):
                rows = np.arange(len(spec.methods)) + j * (len(spec.methods) + 1)
                ax.barh(rows, [np.nan_to_num(scores[model, m][j]) for m in spec.methods],
                        color=[f"C{i}" for i in range(len(spec.methods))])
                ax.set_yticks(rows, [f"{metric}: {m}" for m in spec.methods], fontsize=8)
            ax.set(xlim=(0, 1), title=model, xlabel="scaled mean (1: best)")
            ax.invert_yaxis()
    else:
        fig = Figure(figsize=(4.2 * len(models), 4.2), layout="constrained")
        angles = np.linspace(0, 2 * np.pi, len(axes), endpoint=False)
        closed = np.append(angles, angles[0])
        for k, model in enumerate(models):
            ax = fig.add_subplot(1, len(models), k + 1, projection="polar")
            for method in spec.methods:
                values = np.nan_to_num(scores[model, method])
                ax.plot(closed, np.append(values, values[0]), lw=1.5, label=method)
                ax.fill(closed, np.append(values, values[0]), alpha=0.1)
            ax.set_xticks(angles, [f"{m}\n({BETTER[m]} better)" for m in axes], fontsize=8)
            ax.set_ylim(0, 1)
            ax.set_rorigin(-0.15)  # a method worst on every axis stays a visible polygon
            ax.set_yticks([0.25, 0.5, 0.75, 1.0], ["", "", "", ""])
            ax.set_title(model, pad=18)
            ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.25, -0.15))
    text = ("Each axis is a metric's mean over the items, on a scale from the worst to the best "
            "end (whether higher or lower is better for that metric) of the items' 5th to 95th "
            "percentiles over every model and method shown: methods whose means differ by much "
            "less than the items' spread lie close together. With fewer than three such "
            "metrics, bars show the same scaled means." + note)
    return f"<h2>Radar: methods per model</h2><p>{html.escape(text)}</p>{html_page.figure(fig)}"


def _mean_table(means: dict, spec) -> str:
    header = ["model", "method", *[f"{m} ({BETTER.get(m, '-')})" for m in spec.metrics]]
    rows = [[ref.name, method, *[_mean_text(means[ref.name, method, metric])
                                 for metric in spec.metrics]]
            for ref in spec.models for method in spec.methods]
    return ("<h2>Means</h2><p>Mean +- standard error over the items (in brackets: which way is "
            f"better).</p>{html_page.table(header, rows)}")


def _mean_text(entry) -> str:
    mean, sem = entry[:2]
    return "n/a" if not np.isfinite(mean) else f"{mean:.4g} +- {sem:.2g}" if np.isfinite(sem) \
        else f"{mean:.4g}"


def _distributions(columns: dict, spec) -> str:
    fig = Figure(figsize=(10, 2.8 * len(spec.metrics) + 0.4), layout="constrained")
    axes = fig.subplots(len(spec.metrics), 1, squeeze=False)[:, 0]
    labels = [(ref.name, method) for ref in spec.models for method in spec.methods]
    for ax, metric in zip(axes, spec.metrics):
        data = []
        for model, method in labels:
            values = columns["value"][_select(columns, model=model, method=method,
                                              metric=metric)].astype(np.float64)
            data.append(values[np.isfinite(values)])
        ax.boxplot([d if len(d) else [np.nan] for d in data], showmeans=True)
        ax.set_xticks(np.arange(1, len(labels) + 1),
                      [method if len(spec.models) == 1 else f"{model}\n{method}"
                       for model, method in labels], fontsize=8)
        ax.set_title(f"{metric} ({BETTER.get(metric, 'no direction')}"
                     f"{' is better' if metric in BETTER else ''})", fontsize=10)
    return ("<h2>Distributions per method</h2><p>Box: quartiles; whiskers: 1.5 x the "
            f"interquartile range; triangle: mean.</p>{html_page.figure(fig)}")


def _cost(columns: dict, means: dict, spec) -> str:
    fig = Figure(figsize=(10, 3.2 * -(-len(spec.metrics) // 2)), layout="constrained")
    axes = fig.subplots(-(-len(spec.metrics) // 2), 2, squeeze=False).ravel()
    markers = "osD^v<>p*h"
    for ax, metric in zip(axes, spec.metrics):
        for k, ref in enumerate(spec.models):
            for method in spec.methods:
                entry = means[ref.name, method, metric]
                ax.scatter(entry[3], entry[0], marker=markers[k % len(markers)], s=40)
                ax.annotate(method if len(spec.models) == 1 else f"{ref.name}: {method}",
                            (entry[3], entry[0]), fontsize=7, xytext=(4, 3),
                            textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="method seconds per item", ylabel=f"mean {metric}",
               title=f"{metric} ({BETTER.get(metric, 'no direction')}"
                     f"{' is better' if metric in BETTER else ''}) against cost")
    for ax in axes[len(spec.metrics):]:
        ax.set_visible(False)
    header = ["model", "method", "method s / item", "method inputs / item",
              *[f"{m}: s / item, inputs / item" for m in spec.metrics]]
    rows = []
    for ref in spec.models:
        for method in spec.methods:
            first = means[ref.name, method, spec.metrics[0]]
            rows.append([ref.name, method, f"{first[3]:.3g}", f"{first[4]:.4g}",
                         *[f"{means[ref.name, method, m][5]:.3g}, "
                           f"{means[ref.name, method, m][6]:.4g}" for m in spec.metrics]])
    text = ("Seconds are wall-clock per item (a chunk's time over its items, sessions built "
            "beforehand); inputs are the rows given to ONNX Runtime (a forward, a forward + "
            "gradient, or a head-only run each count one).")
    return (f"<h2>Metric against cost</h2><p>{html.escape(text)}</p>{html_page.figure(fig)}"
            f"{html_page.table(header, rows)}")


def _class_names(explainer) -> list[str]:
    return list(explainer.class_names or [str(k) for k in range(explainer.num_classes)])


def _per_class(columns: dict, group, spec, explainers: dict) -> str:
    by = "label" if spec.labels is not None else "predicted"
    parts = [f"<h2>Per class</h2><p>Mean per {'true' if by == 'label' else 'predicted'} "
             "class (the most frequent classes first).</p>"]
    for ref in spec.models:
        names = _class_names(explainers[ref.name])
        keep = _select(columns, model=ref.name, method=spec.methods[0],
                       metric=spec.metrics[0])
        classes_of = columns[by][keep]
        counts = np.bincount(classes_of[classes_of >= 0], minlength=len(names))
        shown = [k for k in np.argsort(-counts, kind="stable")[:MAX_CLASSES_SHOWN] if counts[k]]
        header = ["class", "items", *[f"{method}: {metric}" for method in spec.methods
                                      for metric in spec.metrics]]
        rows = []
        for k in shown:
            row = [names[k] if k < len(names) else str(k), int(counts[k])]
            for method in spec.methods:
                for metric in spec.metrics:
                    sel = _select(columns, model=ref.name, method=method, metric=metric)
                    sel &= columns[by] == k
                    row.append(f"{_nanmean(columns['value'][sel].astype(np.float64)):.4g}")
            rows.append(row)
        parts.append(f"<h3>{html.escape(ref.name)}</h3>{html_page.table(header, rows)}")
    return "\n".join(parts)


def _disagreement(group, spec, ref, explainer, top: int) -> str:
    prefix = node_name(ref.name)
    score = np.asarray(group[f"{prefix}/disagreement"][:])
    order = [int(i) for i in np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")[:top]
             if np.isfinite(score[i])]
    title = f"<h2>{html.escape(ref.name)}: the items where the methods disagree most</h2>"
    if not order:
        return title + "<p>None: disagreement needs two methods and items whose maps vary.</p>"
    x = np.concatenate([spec.dataset.read_finite(i, i + 1).x for i in order])
    targets = [int(t) for t in np.asarray(group[f"{prefix}/target"][:])[order]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = explainer.explain(x, targets=targets, layers=[ref.layer],
                                methods=list(spec.methods), score=spec.score,
                                batch_size=spec.batch_size)
    maps = [res.cam(m, spec.layer_of(ref, m)) for m in spec.methods]
    names = _class_names(explainer)
    predicted = np.asarray(group[f"{prefix}/predicted"][:])
    values = {(m, k): np.asarray(group[f"{prefix}/values/{m}/{k}"][:])
              for m in spec.methods for k in spec.metrics}
    header = ["item", "target", "predicted", "disagreement",
              *[f"{m}: {k}" for m in spec.methods for k in spec.metrics]]
    rows = [[i, names[targets[r]], names[predicted[i]], f"{score[i]:.3f}",
             *[f"{values[m, k][i]:.4g}" for m in spec.methods for k in spec.metrics]]
            for r, i in enumerate(order)]
    shown = None if explainer.model.tokens else explainer.check_input(x)
    fig = _side_by_side(shown, maps, list(spec.methods), order)
    text = ("Disagreement: 1 - the mean Spearman rank correlation between every two methods' "
            "maps of the item. Each map is scaled to [0, 1]; the first column is the input "
            "(the mean over channels).")
    return (f"{title}<p>{html.escape(text)}</p>{html_page.table(header, rows)}"
            f"{html_page.figure(fig)}")


def _side_by_side(inputs, maps: list[np.ndarray], methods: list[str], items: list[int]):
    """One row per item: the input (when not token ids), then each method's map. 1D: curves;
    2D: images; 3D: the quarter, middle and three-quarter depth slices side by side."""
    columns = ([] if inputs is None else ["input"]) + methods
    fig = Figure(figsize=(2.4 * len(columns) + 0.4, 1.6 * len(items) + 0.5))
    grid = fig.subplots(len(items), len(columns), squeeze=False)
    fig.subplots_adjust(left=0.04, right=0.98, bottom=0.05, top=0.95, wspace=0.1, hspace=0.45)
    for r, item in enumerate(items):
        panels = ([] if inputs is None else [inputs[r].mean(axis=0)]) + [m[r] for m in maps]
        for c, (ax, panel) in enumerate(zip(grid[r], panels)):
            if panel.ndim == 1:
                ax.plot(panel, lw=1, color="0.3" if columns[c] == "input" else "tab:red")
                ax.set(xlim=(0, len(panel) - 1), yticks=[])
            else:
                if panel.ndim == 3:
                    depth = panel.shape[0]
                    panel = np.concatenate([panel[d] for d in (depth // 4, depth // 2,
                                                              3 * depth // 4)], axis=1)
                ax.imshow(panel, cmap="gray" if columns[c] == "input" else "jet",
                          aspect="auto", **({} if columns[c] == "input" else
                                            {"vmin": 0, "vmax": 1}))
                ax.set(xticks=[], yticks=[])
            ax.set_title(f"item {item}: {columns[c]}" if c == 0 else columns[c], fontsize=8)
    return fig
