"""Volumes and videos: a montage of overlaid slices, and an animated GIF through depth / time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from PIL import Image

from ..errors import InputError
from ..files import write_atomic
from ._common import (
    DEFAULT_DPI,
    PathLike,
    add_colorbar,
    check_cams,
    check_ranges,
    finish,
    get_cmap,
    new_figure,
    score_norm,
    wrap_title,
)
from .images import overlay_rgb


def _overlays(volume, cam, cmap: Colormap, alpha: float, channel: int | None) -> np.ndarray:
    """(D, H, W, 3) uint8: every slice of the volume with its CAM blended over it."""
    cam = check_cams(cam, 3)
    if cam.ndim != 3:
        raise InputError(f"cam has shape {cam.shape}: expected one (D, H, W) map.")
    volume = np.asarray(volume)
    if volume.ndim != 4:
        raise InputError(f"volume has shape {volume.shape}: expected (C, D, H, W) (or a video "
                         f"(C, T, H, W)).")
    return overlay_rgb(volume, cam, cmap=cmap, alpha=alpha, channel=channel)


def slice_label(k: int, fps: float | None) -> str:
    """``"z = 3"`` for volume slices, ``"t = 0.40 s"`` for video frames (``fps`` given)."""
    return f"z = {k}" if fps is None else f"t = {k / fps:.2f} s"


def _columns(n: int, most: int = 8) -> int:
    """Columns for n panels: a grid about 2.5 times as wide as tall with few empty cells."""
    def cost(c: int) -> float:
        rows = -(-n // c)
        return 3 * (rows * c - n) / n + abs(np.log(c / rows / 2.5))
    return min(range(1, min(n, most) + 1), key=cost)


def montage_figure(volume, cam, score_range, *, slices=None, ncols: int | None = None,
                   fps: float | None = None, cmap: str | Colormap = "jet", alpha: float = 0.5,
                   channel: int | None = None, title: str | None = None,
                   colorbar_label: str = "importance",
                   figsize: tuple[float, float] | None = None, path: PathLike | None = None,
                   dpi: float = DEFAULT_DPI) -> Figure:
    """Slices of a volume / frames of a video with the CAM overlaid, as one figure.

    volume: ``(C, D, H, W)`` (a video: ``(C, T, H, W)``; one channel grey, three RGB, else
    ``channel`` picks one); cam: ``(D, H, W)`` in [0, 1]; score_range: its (min, max), which
    the colour bar spans. slices: the depth indices shown (default: all, or 16 evenly spaced
    when deeper); fps: label frames by time. Returns the Figure (saved to ``path`` if given).
    """
    cmap = get_cmap(cmap)
    frames = _overlays(volume, cam, cmap, alpha, channel)
    (lo_hi,) = check_ranges(score_range, 1)
    depth = len(frames)
    if slices is None:
        slices = np.unique(np.linspace(0, depth - 1, min(depth, 16)).round().astype(int))
    slices = [int(k) for k in slices]
    if not slices or not all(0 <= k < depth for k in slices):
        raise InputError(f"slices={slices}: pick indices in [0, {depth - 1}] along the "
                         f"depth / time axis.")
    ncols = ncols or _columns(len(slices))
    nrows = -(-len(slices) // ncols)
    height, width = frames.shape[1:3]
    panel = min(2.2, 14.0 / ncols)
    if figsize is None:  # panels of `panel` inches plus their labels, and the colour bar
        figsize = (1.3 + ncols * panel, 0.15 + 0.35 * bool(title)
                   + nrows * (0.95 * panel * height / width + 0.22))
    fig = new_figure(*figsize)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, k in zip(axes.flat, slices):
        ax.imshow(frames[k], interpolation="nearest")
        ax.set_title(slice_label(k, fps), fontsize=8, pad=2)
    add_colorbar(fig, axes, score_norm(lo_hi), cmap, colorbar_label)
    if title:
        fig.suptitle(wrap_title(title, figsize[0] - 0.5, 11), fontsize=11)
    return finish(fig, path, dpi)


def volume_gif(volume, cam, score_range, path: PathLike, *, fps: float | None = None,
               frame_ms: int | None = None, cmap: str | Colormap = "jet", alpha: float = 0.5,
               channel: int | None = None, title: str | None = None,
               colorbar_label: str = "importance", frames_dir: PathLike | None = None,
               size: tuple[float, float] = (4.6, 3.8), dpi: float = 90) -> list[Path]:
    """An animated GIF of the CAM overlaid on the volume, one frame per slice / video frame.

    Arguments as :func:`montage_figure`. The GIF plays ``fps`` frames per second for a video
    (default 5 for volumes), or one frame per ``frame_ms`` milliseconds, and loops. Each
    frame has the title, the slice's depth (or time) and a colour bar spanning the score
    range. With ``frames_dir`` every frame is also written as ``<gif stem>_<k>.png``.
    Returns the written paths, the GIF first. The drawing figure is never shown.
    """
    cmap = get_cmap(cmap)
    frames = _overlays(volume, cam, cmap, alpha, channel)
    (lo_hi,) = check_ranges(score_range, 1)
    path = Path(path)
    if path.suffix.lower() != ".gif":
        raise InputError(f"path={str(path)!r}: the animation is written as a GIF; end the "
                         f"file name with .gif.")
    if frame_ms is None:
        frame_ms = round(1000 / (fps or 5))

    fig = new_figure(*size)
    ax = fig.add_subplot()
    image = ax.imshow(frames[0], interpolation="nearest")
    ax.set_axis_off()
    label = ax.set_title("", fontsize=9)
    if title:
        fig.suptitle(wrap_title(title, size[0] - 0.3, 9), fontsize=9)
    add_colorbar(fig, ax, score_norm(lo_hi), cmap, colorbar_label)
    rendered = []
    for k, frame in enumerate(frames):
        image.set_data(frame)
        label.set_text(f"{slice_label(k, fps)}   ({k + 1} / {len(frames)})")
        fig.canvas.draw()
        rendered.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()))

    path.parent.mkdir(parents=True, exist_ok=True)
    # One palette for every frame, from up to 16 of them spread over the depth, keeps colours
    # stable; max-coverage keeps rare colours (median cut maps a lone dark red to blue).
    picks = np.linspace(0, len(rendered) - 1, min(len(rendered), 16)).astype(int)
    sample = Image.fromarray(np.concatenate([np.asarray(rendered[k]) for k in picks]))
    palette = sample.quantize(colors=255, method=Image.Quantize.MAXCOVERAGE)
    indexed = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in rendered]
    write_atomic(path, lambda handle: indexed[0].save(
        handle, format="GIF", save_all=True, append_images=indexed[1:], duration=frame_ms,
        loop=0))
    written = [path]
    if frames_dir is not None:
        frames_dir = Path(frames_dir)
        frames_dir.mkdir(parents=True, exist_ok=True)
        for k, im in enumerate(rendered):
            written.append(frames_dir / f"{path.stem}_{k:03d}.png")
            write_atomic(written[-1], lambda handle, im=im: im.save(handle, format="PNG",
                                                                     optimize=True))
    return written
