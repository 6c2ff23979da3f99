"""save_figures: one file per explained row, the figure chosen by the input's modality."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.colors import Colormap

from ..errors import InputError
from ..explanation import Explanation
from ..methods import get_method
from ._common import DEFAULT_DPI, PathLike, check_ranges, check_titles
from .images import overlay_figure
from .signals import heatmap_figure, signal_figure
from .titles import as_labels, file_stem, map_title, method_title, row_title
from .tokens import token_figure
from .volumes import montage_figure, volume_gif

# The figure kinds each map rank allows; the first is the default.
KINDS = {1: ("signal", "tokens"), 2: ("image", "signal", "heatmap"), 3: ("volume", "montage")}


def save_figures(explanation: Explanation | np.ndarray, inputs, out_dir: PathLike, *,
                 method: str | None = None, layer: str | None = None, kind: str | None = None,
                 score_ranges=None, titles: Sequence[str] | None = None, true_labels=None,
                 class_names: Sequence[str] | None = None, fs: float | None = None,
                 channel_names: Sequence[str] | None = None,
                 channels: Sequence[int] | None = None, cmap: str | Colormap = "jet",
                 alpha: float = 0.5, channel: int | None = None,
                 tokens: Sequence[Sequence[str]] | None = None, token_mask=None,
                 pad_id: int | None = None, fps: float | None = None, frames: bool = False,
                 channels_last: bool | None = None, prefix: str = "",
                 dpi: float = DEFAULT_DPI) -> list[Path]:
    """Draw every row of an explanation into ``out_dir``, one file per row; return the paths.

    explanation: an :class:`~onnx_cam.Explanation`, or plain CAMs ``(rows, *spatial)`` in
    [0, 1] (row ``i`` explains input item ``i``; then ``score_ranges`` ``(rows, 2)``, default
    (0, 1), and optional ``titles``). inputs: the batch that was explained, as the model takes
    it: ``(N, C, *spatial)`` or channels-last ``(N, *spatial, C)`` (found from the shapes;
    ``channels_last`` settles a tie), or token ids ``(N, T)``.
    method, layer: the map to draw (default: every method and layer of the explanation, each
    in its own files). kind: the figure, by default from the map's rank -- 1D: ``"signal"``
    (or ``"tokens"`` for token ids); 2D: ``"image"`` (overlay), ``"signal"`` (a signal-image
    CAM drawn per channel) or ``"heatmap"``; 3D: ``"volume"`` (an animated GIF; with
    ``frames=True`` also a PNG per slice) or ``"montage"`` (one PNG of slices).
    Titles carry the explained class and its probability ("t vs f" for contrastive rows), the
    predicted class and, given ``true_labels`` (one per input item), the true class.
    fs, channel_names, channels: signal axes (see :func:`signal_figure`); cmap, alpha,
    channel: overlays (see :func:`overlay_figure`); tokens: the strings of each item's tokens
    (default: the ids), token_mask ``(N, T)`` (True for real tokens) or ``pad_id`` mark the
    padding left out; fps: video frame rate. Files are named
    ``<prefix>item<k>_<target>[_vs_<foil>]_<method>_<layer>.png`` (``.gif``).
    """
    inputs = np.asarray(inputs)
    maps = list(_maps(explanation, method, layer, score_ranges))
    rows = len(maps[0][2])
    items = (explanation.items if isinstance(explanation, Explanation) else np.arange(rows))
    if items.max(initial=-1) >= len(inputs):
        raise InputError(f"The explanation refers to input item {items.max()} but inputs has "
                         f"{len(inputs)} items: pass the batch that was explained.")
    labels = as_labels(true_labels, len(inputs))
    given_titles = check_titles(titles, rows) if titles is not None else None
    masks = _token_masks(token_mask, pad_id, inputs)
    out_dir = Path(out_dir)
    written: list[Path] = []
    for name, lay, cams, ranges in maps:
        spatial = cams.shape[1:]
        token_ids = np.issubdtype(inputs.dtype, np.integer) and inputs.ndim == 2
        figure_kind = _kind(kind, len(spatial), tokens is not None or token_ids)
        extras = {}
        if name is not None:
            extras["colorbar_label"] = f"{method_title(name)} importance"
        suptitle = map_title(name, lay) if name is not None else None
        for r in range(rows):
            k = int(items[r])
            if given_titles is not None:
                title = given_titles[r]
            elif isinstance(explanation, Explanation):
                title = row_title(explanation, r, true_label=labels[k], class_names=class_names)
            else:
                title = None
            full_title = " — ".join(t for t in (suptitle, title) if t) or None
            stem = prefix + file_stem(explanation if isinstance(explanation, Explanation)
                                      else None, r, k, name, lay)
            path = out_dir / f"{stem}.{'gif' if figure_kind == 'volume' else 'png'}"
            cam, rng = cams[r], ranges[r]
            if figure_kind == "tokens":
                words = (tokens[k] if tokens is not None
                         else [str(int(v)) for v in inputs[k]])
                token_figure(words, cam, rng, mask=None if masks is None else masks[k],
                             cmap=cmap, title=full_title, path=path, dpi=dpi, **extras)
                written.append(path)
                continue
            item = _channels_first(inputs[k], spatial, channels_last)
            if figure_kind == "signal":
                signals = item if cam.ndim == 1 else _single_image_channel(item)
                signal_figure(signals, cam, rng, fs=fs, channels=channels,
                              channel_names=channel_names, cmap=cmap, titles=title,
                              suptitle=suptitle, path=path, dpi=dpi, **extras)
            elif figure_kind == "image":
                overlay_figure(item, cam, rng, cmap=cmap, alpha=alpha, channel=channel, fs=fs,
                               channel_names=channel_names, titles=title, suptitle=suptitle,
                               path=path, dpi=dpi, **extras)
            elif figure_kind == "heatmap":
                heatmap_figure(cam, rng, fs=fs, channel_names=channel_names, cmap=cmap,
                               titles=title, suptitle=suptitle, path=path, dpi=dpi, **extras)
            elif figure_kind == "montage":
                montage_figure(item, cam, rng, fps=fps, cmap=cmap, alpha=alpha,
                               channel=channel, title=full_title, path=path, dpi=dpi, **extras)
            else:
                written += volume_gif(item, cam, rng, path, fps=fps, cmap=cmap, alpha=alpha,
                                      channel=channel, title=full_title,
                                      frames_dir=out_dir / stem if frames else None, **extras)
                continue
            written.append(path)
    return written


def _maps(explanation, method, layer, score_ranges):
    """(method, layer, cams, score ranges) of each map to draw."""
    if isinstance(explanation, Explanation):
        if score_ranges is not None:
            raise InputError("score_ranges is for plain CAM arrays; an Explanation carries its "
                             "own (Explanation.score_range).")
        keys = explanation.maps  # input attributions under layer "input"
        if method is not None:
            keys = [k for k in keys if k[0] == get_method(method).name] or [(method, layer)]
        if layer is not None:
            keys = [(m, layer) for m in dict.fromkeys(m for m, _ in keys)]
        for m, lay in keys:
            yield m, lay, explanation.cam(m, lay), explanation.score_range(m, lay)
        return
    cams = np.asarray(explanation, dtype=np.float32)
    if cams.ndim < 2:
        raise InputError(f"CAMs have shape {cams.shape}: expected (rows, *spatial), one map per "
                         f"input item, or an Explanation.")
    ranges = (np.tile([0.0, 1.0], (len(cams), 1)) if score_ranges is None
              else check_ranges(score_ranges, len(cams)))
    yield method, layer, cams, ranges


def _kind(kind: str | None, rank: int, token_ids: bool) -> str:
    if rank not in KINDS:
        raise InputError(f"CAMs with {rank} spatial axes: figures exist for 1D, 2D and 3D maps.")
    if kind is None:
        return "tokens" if rank == 1 and token_ids else KINDS[rank][0]
    if kind not in KINDS[rank]:
        raise InputError(f"kind={kind!r} does not fit a {rank}D map: choose one of "
                         f"{list(KINDS[rank])}.")
    return kind


def _channels_first(item: np.ndarray, spatial: tuple[int, ...],
                    channels_last: bool | None) -> np.ndarray:
    """The input item as (C, *spatial), whichever layout the model takes."""
    first = item.shape[1:] == spatial
    last = item.shape[:-1] == spatial
    if last and (channels_last or not first):
        return np.moveaxis(item, -1, 0)
    if first:
        return item
    raise InputError(f"An input item of shape {item.shape} does not fit maps of shape "
                     f"{spatial}: expected (C, *{spatial}) or (*{spatial}, C). Pass the batch "
                     f"that was explained.")


def _single_image_channel(item: np.ndarray) -> np.ndarray:
    """A signal-image (1, C, T) as its signals (C, T)."""
    if item.shape[0] != 1:
        raise InputError(f"kind='signal' on a 2D map draws a signal-image (1, C, T) per channel; "
                         f"this input item has {item.shape[0]} image channels. Use "
                         f"kind='image' or kind='heatmap'.")
    return item[0]


def _token_masks(token_mask, pad_id: int | None, inputs: np.ndarray) -> np.ndarray | None:
    """(N, T) booleans, True for real tokens, from token_mask or pad_id."""
    if token_mask is not None and pad_id is not None:
        raise InputError("Give token_mask or pad_id, not both.")
    if pad_id is not None:
        return inputs != pad_id
    return None if token_mask is None else np.asarray(token_mask)
