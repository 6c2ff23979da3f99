"""What every figure shares: pyplot-free Figures, argument checks, the score colour scale.

Figures are built as ``matplotlib.figure.Figure`` objects on an Agg canvas, never through
``pyplot``: they are not registered with pyplot's figure manager, so nothing is left open
(``plt.get_fignums()`` stays empty), no backend is switched, and a figure is freed like any
other object once the caller drops it. Jupyter still displays a returned Figure.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colorbar import Colorbar
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure

from ..errors import InputError
from ..files import write_atomic

PathLike = str | os.PathLike
DEFAULT_DPI = 110


def new_figure(width: float, height: float, *, constrained: bool = True) -> Figure:
    """A Figure on its own Agg canvas, outside pyplot (see the module docstring)."""
    fig = Figure(figsize=(width, height), layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def finish(fig: Figure, path: PathLike | None, dpi: float) -> Figure:
    """Save ``fig`` to ``path`` (parent folders created) when a path is given; return it."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda handle: fig.savefig(handle, dpi=dpi,
                                                      format=path.suffix[1:] or "png"))
    return fig


def wrap_title(title: str | None, width_in: float, font_size: float = 10) -> str | None:
    """Break a title at its " · " separators so that each line fits ``width_in`` inches."""
    if not title:
        return title
    fits = max(int(width_in * 72 / (0.55 * font_size)), 10)  # characters per line
    lines = [""]
    for part in title.split(" · "):
        if lines[-1] and len(lines[-1]) + 3 + len(part) > fits:
            lines.append(part)
        else:
            lines[-1] = f"{lines[-1]} · {part}" if lines[-1] else part
    return "\n".join(lines)


def get_cmap(cmap: str | Colormap) -> Colormap:
    """A matplotlib colormap from its name (InputError naming the fix if unknown)."""
    if isinstance(cmap, Colormap):
        return cmap
    try:
        return colormaps[cmap]
    except (KeyError, TypeError):
        raise InputError(f"Unknown colormap {cmap!r}: pass a matplotlib colormap name such as "
                         f"'jet', 'inferno' or 'viridis' (see matplotlib.colormaps).") from None


def check_cams(cams, spatial_rank: int, what: str = "cam") -> np.ndarray:
    """``cams`` as float32 of rank ``spatial_rank`` (one item) or ``spatial_rank + 1`` (batch),
    with values in [0, 1]."""
    cams = np.asarray(cams, dtype=np.float32)
    if cams.ndim not in (spatial_rank, spatial_rank + 1):
        raise InputError(f"{what} has shape {cams.shape}: expected {spatial_rank} spatial axes "
                         f"(one item) or a leading batch axis too.")
    finite = cams[np.isfinite(cams)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise InputError(f"{what} values lie in [{finite.min():.3g}, {finite.max():.3g}]; pass "
                         f"the map normalised to [0, 1] (Explanation.cam) and its score range "
                         f"(Explanation.score_range) separately.")
    return cams


def check_ranges(score_ranges, n: int) -> np.ndarray:
    """Per-item (min, max) as float64 (n, 2); a single (2,) range needs n == 1."""
    ranges = np.asarray(score_ranges, dtype=np.float64)
    if ranges.shape == (2,):
        ranges = ranges[None]
    if ranges.shape != (n, 2):
        raise InputError(f"score_ranges has shape {ranges.shape}: expected (2,) for one item or "
                         f"({n}, 2), one (min, max) per item (Explanation.score_range).")
    if not np.isfinite(ranges).all() or (ranges[:, 0] > ranges[:, 1]).any():
        raise InputError("score_ranges must be finite (min, max) pairs with min <= max; got "
                         f"{ranges.tolist()}.")
    return ranges


def check_titles(titles: str | Sequence[str] | None, n: int) -> list[str | None]:
    """One title (or None) per item."""
    if titles is None:
        return [None] * n
    if isinstance(titles, str):
        titles = [titles]
    titles = list(titles)
    if len(titles) != n:
        raise InputError(f"{len(titles)} titles for {n} items: give one title per item.")
    return titles


def batched(array: np.ndarray, item_rank: int) -> tuple[np.ndarray, bool]:
    """Add a batch axis to a single item; returns (batch, was_single)."""
    if array.ndim == item_rank:
        return array[None], True
    return array, False


def score_norm(score_range) -> Normalize:
    """The colour scale of one item: its score range, so ``cam * (max - min) + min`` maps to
    the colour of its score. A constant map (min == max) gets a colour bar widened around
    its value by matplotlib."""
    lo, hi = (float(v) for v in score_range)
    return Normalize(vmin=lo, vmax=hi)


def to_scores(cam: np.ndarray, score_range) -> np.ndarray:
    """The map in score units: ``cam * (max - min) + min``."""
    lo, hi = (float(v) for v in score_range)
    return cam.astype(np.float64) * (hi - lo) + lo


def add_colorbar(fig: Figure, ax: Axes | Sequence[Axes] | None, norm: Normalize, cmap: Colormap,
                 label: str, mappable=None, cax: Axes | None = None) -> Colorbar:
    """A vertical colour bar right of ``ax`` (or in ``cax``) whose limits are ``norm``'s:
    the score range."""
    if mappable is None:
        mappable = ScalarMappable(norm=norm, cmap=cmap)
    if cax is not None:
        bar = fig.colorbar(mappable, cax=cax)
    else:
        bar = fig.colorbar(mappable, ax=ax, pad=0.02, fraction=0.05, aspect=25)
    bar.set_label(label)
    bar.ax.tick_params(labelsize=8)
    return bar


def display_image(item, channel: int | None = None) -> np.ndarray:
    """An input item (C, *spatial) as a picture in [0, 1]: (*spatial) grey or (*spatial, 3) RGB.

    One channel is grey, three are RGB; otherwise ``channel`` picks one. uint8 inputs are
    divided by 255, float inputs already in [0, 1] are kept, others are min-max scaled over
    the whole item (a volume or video keeps one scale across its slices).
    """
    item = np.asarray(item)
    if item.ndim < 2:
        raise InputError(f"input item has shape {item.shape}: expected (C, *spatial).")
    if channel is not None:
        if not -item.shape[0] <= channel < item.shape[0]:
            raise InputError(f"channel={channel} but the item has {item.shape[0]} channels.")
        picture = item[channel]
    elif item.shape[0] == 1:
        picture = item[0]
    elif item.shape[0] == 3:
        picture = np.moveaxis(item, 0, -1)
    else:
        raise InputError(f"input item has {item.shape[0]} channels: one is shown grey and three "
                         f"as RGB; pass channel=k to show channel k.")
    if picture.dtype == np.uint8:
        return picture.astype(np.float32) / 255
    picture = np.nan_to_num(picture.astype(np.float32))
    lo, hi = float(picture.min()), float(picture.max())
    if lo >= 0 and hi <= 1:
        return picture
    return (picture - lo) / (hi - lo) if hi > lo else np.zeros_like(picture)


def time_axis(n_samples: int, fs: float | None) -> tuple[np.ndarray, str]:
    """Sample times in seconds (``fs`` in Hz) or sample indices, and the axis label."""
    if fs is None:
        return np.arange(n_samples, dtype=np.float64), "sample"
    if not fs > 0:
        raise InputError(f"fs={fs}: the sampling frequency must be a positive number of Hz.")
    return np.arange(n_samples, dtype=np.float64) / fs, "time (s)"


def channel_labels(n_channels: int, channel_names: Sequence[str] | None) -> list[str]:
    """Names of all channels (``channel_names`` checked against their number)."""
    if channel_names is None:
        return [f"ch {c}" for c in range(n_channels)]
    names = [str(name) for name in channel_names]
    if len(names) != n_channels:
        raise InputError(f"{len(names)} channel_names for {n_channels} channels: name every "
                         f"channel of the input.")
    return names
