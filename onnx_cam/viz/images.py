"""Images, signal-images and spectrograms: the CAM alpha-blended over the input."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from .. import kernels
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
    display_image,
    finish,
    get_cmap,
    new_figure,
    score_norm,
    time_axis,
    wrap_title,
)


def overlay_rgb(item, cam: np.ndarray, *, cmap: str | Colormap = "jet", alpha: float = 0.5,
                channel: int | None = None) -> np.ndarray:
    """The input item ``(C, *spatial)`` shown as a picture with the colour-mapped ``cam``
    (*spatial, in [0, 1]) blended over it: ``(*spatial, 3)`` uint8, by the Numba kernel
    ``onnx_cam.kernels.overlay`` (colour ``c`` of the colormap, weight ``alpha``)."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha={alpha}: the CAM's opacity must lie in [0, 1].")
    picture = display_image(item, channel)
    if picture.shape[:cam.ndim] != cam.shape:
        raise InputError(f"input item of shape {np.shape(item)} does not fit a CAM of shape "
                         f"{cam.shape}: expected (C, *{cam.shape}).")
    return kernels.overlay(picture, cam, alpha=alpha, cmap=get_cmap(cmap))


def overlay_figure(images, cams, score_ranges, *, cmap: str | Colormap = "jet",
                   alpha: float = 0.5, channel: int | None = None, show_input: bool = True,
                   fs: float | None = None, channel_names: Sequence[str] | None = None,
                   titles: str | Sequence[str] | None = None, suptitle: str | None = None,
                   colorbar_label: str = "importance",
                   figsize: tuple[float, float] | None = None, path: PathLike | None = None,
                   dpi: float = DEFAULT_DPI) -> Figure:
    """The CAM overlaid on each input, one column per item (input above, overlay below).

    images: one item ``(C, H, W)`` or a batch ``(N, C, H, W)``; one channel is shown grey,
    three as RGB, else ``channel`` picks one (uint8 as is, floats outside [0, 1] min-max
    scaled). cams: ``(H, W)`` / ``(N, H, W)`` in [0, 1]. score_ranges: ``(2,)`` / ``(N, 2)``:
    each item's colour bar spans exactly its (min, max). cmap: any matplotlib colormap
    (``jet`` default); alpha: the CAM's opacity. For signal-images and spectrograms give
    ``fs`` (Hz: the horizontal axis in seconds) and ``channel_names`` (one per row).
    Returns the Figure (saved to ``path`` when given); it is not registered with pyplot.
    """
    images, single = batched(np.asarray(images), 3)
    if images.ndim != 4:
        raise InputError(f"images have shape {images.shape}: expected (C, H, W) or "
                         f"(N, C, H, W).")
    n = len(images)
    cams = check_cams(cams, 2)
    cams = cams[None] if single and cams.ndim == 2 else cams
    if cams.shape != (n, *images.shape[2:]):
        raise InputError(f"cams of shape {cams.shape} do not fit images of shape "
                         f"{images.shape}: expected one {images.shape[2:]} map per item.")
    ranges = check_ranges(score_ranges, n)
    titles = check_titles(titles, n)
    cmap = get_cmap(cmap)
    height, width = images.shape[2:]
    as_signal = fs is not None or channel_names is not None
    rows = 2 if show_input else 1

    if figsize is None:
        panel = 3.4 if not as_signal else 5.0
        aspect = min(max(height / width, 0.35), 1.6) if not as_signal else 0.55
        figsize = (min(0.6 + (panel + 0.8) * n, 24.0), 0.7 + rows * panel * aspect)
    fig = new_figure(*figsize)
    axes = fig.subplots(rows, n, squeeze=False)
    for j in range(n):
        norm = score_norm(ranges[j])
        shown = [display_image(images[j], channel)] if show_input else []
        shown.append(overlay_rgb(images[j], cams[j], cmap=cmap, alpha=alpha, channel=channel))
        for ax, picture in zip(axes[:, j], shown):
            _draw(ax, picture, as_signal, fs, channel_names)
        if titles[j]:
            axes[0, j].set_title(wrap_title(titles[j], figsize[0] / n - 0.8), fontsize=10)
        add_colorbar(fig, axes[:, j], norm, cmap, colorbar_label)
    if suptitle:
        fig.suptitle(suptitle)
    return finish(fig, path, dpi)


def _draw(ax, picture: np.ndarray, as_signal: bool, fs: float | None,
          channel_names: Sequence[str] | None) -> None:
    """Show one picture: bare for images, with time and channel axes for signal-images."""
    grey = dict(cmap="gray", vmin=0.0, vmax=1.0) if picture.ndim == 2 else {}
    if not as_signal:
        ax.imshow(picture, interpolation="nearest", **grey)
        ax.set_axis_off()
        return
    n_rows, n_samples = picture.shape[:2]
    t, t_label = time_axis(n_samples, fs)
    step = t[1] - t[0] if n_samples > 1 else 1.0
    ax.imshow(picture, aspect="auto", interpolation="nearest",
              extent=(t[0] - step / 2, t[-1] + step / 2, n_rows - 0.5, -0.5), **grey)
    if channel_names is not None or n_rows <= 32:
        ax.set_yticks(range(n_rows), channel_labels(n_rows, channel_names), fontsize=8)
    ax.set_xlabel(t_label)
    ax.tick_params(labelsize=8)
