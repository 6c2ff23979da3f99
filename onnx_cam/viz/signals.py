"""Signals: channels drawn as lines coloured by the importance at each sample, and the
channel x time heatmap of a signal-image CAM."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from ..errors import InputError
from ._common import (
    DEFAULT_DPI,
    PathLike,
    add_colorbar,
    batched,
    channel_labels,
    check_cams,
    check_ranges,
    check_titles,
    finish,
    get_cmap,
    new_figure,
    score_norm,
    time_axis,
    to_scores,
    wrap_title,
)


def sample_segments(t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(T, 3, 2) polylines, one per sample: from the midpoint with the previous sample, through
    the sample, to the midpoint with the next one. Coloured by its sample's value, the line's
    colour follows the importance sample by sample and the pieces join without gaps."""
    points = np.stack([t, y], axis=1)
    mids = (points[:-1] + points[1:]) / 2
    starts = np.concatenate([points[:1], mids])
    ends = np.concatenate([mids, points[-1:]])
    return np.stack([starts, points, ends], axis=1)


def signal_figure(signals, cams, score_ranges, *, fs: float | None = None,
                  channels: Sequence[int] | None = None,
                  channel_names: Sequence[str] | None = None, cmap: str | Colormap = "jet",
                  titles: str | Sequence[str] | None = None, suptitle: str | None = None,
                  colorbar_label: str = "importance", linewidth: float = 1.3,
                  figsize: tuple[float, float] | None = None, path: PathLike | None = None,
                  dpi: float = DEFAULT_DPI) -> Figure:
    """Each selected channel as a line coloured by the importance at each sample.

    signals: one item ``(C, T)`` or a batch ``(N, C, T)``.
    cams: in [0, 1]; ``(T,)`` / ``(N, T)`` for a 1D CAM (every channel takes the same colours)
    or ``(C, T)`` / ``(N, C, T)`` for a 2D signal-image CAM (each channel its own row).
    score_ranges: ``(2,)`` / ``(N, 2)``, each item's (min, max): colours are those of
    ``cam * (max - min) + min`` and each item's colour bar spans exactly its range.
    fs: sampling frequency in Hz (time axis in seconds; else in samples). channels: indices
    to draw (default all); channel_names: a name for every channel of the input.
    The grid has one row per selected channel and one column per item, with the item's
    title above its column and its colour bar beside it. Returns the Figure (saved to
    ``path`` when given); it is not registered with pyplot, so nothing needs closing.
    """
    signals, single = batched(np.asarray(signals, dtype=np.float64), 2)
    if signals.ndim != 3:
        raise InputError(f"signals have shape {signals.shape}: expected (C, T) or (N, C, T).")
    n, n_channels, n_samples = signals.shape
    cams = check_cams(cams, np.ndim(cams))
    item_shape = cams.shape if single else cams.shape[1:]
    if (not single and cams.shape[0] != n) or item_shape not in (
            (n_samples,), (n_channels, n_samples)):
        raise InputError(f"cams of shape {cams.shape} do not fit signals of shape "
                         f"{signals.shape[single:]}: give per item a (T,) map (1D CAM) or a "
                         f"(C, T) map (signal-image CAM), T = {n_samples}, C = {n_channels}.")
    cams = cams.reshape(n, -1, n_samples)
    ranges = check_ranges(score_ranges, n)
    titles = check_titles(titles, n)
    names = channel_labels(n_channels, channel_names)
    chosen = _check_channels(channels, n_channels)
    cmap = get_cmap(cmap)
    t, t_label = time_axis(n_samples, fs)

    if figsize is None:
        figsize = (min(2.2 + 6.0 * n, 24.0), min(1.2 + 1.05 * len(chosen), 16.0))
    fig = new_figure(*figsize)
    axes = fig.subplots(len(chosen), n, sharex="col", squeeze=False)
    for j in range(n):
        norm = score_norm(ranges[j])
        for r, c in enumerate(chosen):
            ax = axes[r, j]
            cam = cams[j, c if cams.shape[1] > 1 else 0]
            lines = LineCollection(sample_segments(t, signals[j, c]), cmap=cmap, norm=norm,
                                   linewidths=linewidth, capstyle="round")
            lines.set_array(to_scores(cam, ranges[j]))
            ax.add_collection(lines)
            ax.autoscale_view()
            ax.set_xlim(t[0], t[-1])
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.25, lw=0.5)
            if j == 0:
                ax.set_ylabel(names[c], rotation=0, ha="right", va="center", fontsize=9)
        axes[-1, j].set_xlabel(t_label)
        if titles[j]:
            axes[0, j].set_title(wrap_title(titles[j], figsize[0] / n - 1.2), fontsize=10)
        add_colorbar(fig, axes[:, j], norm, cmap, colorbar_label, mappable=lines)
    if suptitle:
        fig.suptitle(suptitle)
    return finish(fig, path, dpi)


def heatmap_figure(cams, score_ranges, *, fs: float | None = None,
                   channel_names: Sequence[str] | None = None, cmap: str | Colormap = "jet",
                   titles: str | Sequence[str] | None = None, suptitle: str | None = None,
                   colorbar_label: str = "importance",
                   figsize: tuple[float, float] | None = None, path: PathLike | None = None,
                   dpi: float = DEFAULT_DPI) -> Figure:
    """The channel x time heatmap of signal-image CAMs ``(C, T)`` or ``(N, C, T)`` in [0, 1].

    One row per item, coloured in score units (``cam * (max - min) + min``) with a colour
    bar spanning the item's score range; channels top to bottom, named by
    ``channel_names``; time in seconds when ``fs`` (Hz) is given. Returns the Figure (saved to
    ``path`` when given).
    """
    cams, _ = batched(check_cams(cams, 2), 2)
    n, n_channels, n_samples = cams.shape
    ranges = check_ranges(score_ranges, n)
    titles = check_titles(titles, n)
    names = channel_labels(n_channels, channel_names)
    cmap = get_cmap(cmap)
    t, t_label = time_axis(n_samples, fs)
    step = t[1] - t[0] if n_samples > 1 else 1.0
    extent = (t[0] - step / 2, t[-1] + step / 2, n_channels - 0.5, -0.5)

    if figsize is None:
        figsize = (9.0, min(1.0 + n * (0.9 + 0.22 * n_channels), 16.0))
    fig = new_figure(*figsize)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    for j, ax in enumerate(axes):
        norm = score_norm(ranges[j])
        image = ax.imshow(to_scores(cams[j], ranges[j]), cmap=cmap, norm=norm, aspect="auto",
                          interpolation="nearest", extent=extent)
        ax.set_yticks(range(n_channels), names if n_channels <= 32 else None, fontsize=8)
        ax.tick_params(labelsize=8)
        if titles[j]:
            ax.set_title(wrap_title(titles[j], figsize[0] - 1.5), fontsize=10)
        add_colorbar(fig, ax, norm, cmap, colorbar_label, mappable=image)
    axes[-1].set_xlabel(t_label)
    if suptitle:
        fig.suptitle(suptitle)
    return finish(fig, path, dpi)


def _check_channels(channels: Sequence[int] | None, n_channels: int) -> list[int]:
    if channels is None:
        return list(range(n_channels))
    chosen = [int(c) for c in channels]
    bad = [c for c in chosen if not 0 <= c < n_channels]
    if bad or not chosen:
        raise InputError(f"channels={list(channels)}: pick channel indices in "
                         f"[0, {n_channels - 1}].")
    return chosen
