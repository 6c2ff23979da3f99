"""SignalGrad-CAM's displays drawn with ``onnx_cam.viz``: returned, saved when asked, never shown.

Files go where SignalGrad-CAM puts them: get_cam's per-item figures in
``<dir>/<item name>/<explainer>_<layer>_class<k>[_foil<f>].png`` (``.gif`` for 3D; its
frames, when asked, as ``frame_<k>.png`` in a folder named as the GIF without ``.gif``), the
single-channel figures as ``channel_graphs_...png`` there too, the overlays of all items in
``<dir>/results_...png``, the token bars as ``<dir>/barplot_..._<item name>.png`` (one figure
per item here). Every figure is made outside pyplot, so none is left open.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import viz
from ..errors import InputError
from ..viz.titles import class_label
from .items import as_list, to_numpy


def draw_get_cam(builder, items, data_labels, data_names, cams, probs, ranges, keys,
                 results_dir, fs, channel_names, video_fps_list, show_frames, cmap) -> None:
    """get_cam's own figures: per item and key, the map (1D: a strip over time; 2D: overlaid
    on the item when its shape fits the map, else a heatmap; 3D: a GIF through depth)."""
    names = _names(data_names, len(items))
    labels = as_list(data_labels)
    for (explainer, layer, t, f), key in keys.items():
        for i, item in enumerate(items):
            cam, rng = _unit_cam(cams[key][i]), _range(ranges[key], i)
            title = _title(builder, names[i], t, f, probs[key][i], _at(labels, i))
            folder = Path(results_dir) / _folder(names[i])
            stem = _stem("", explainer, layer, t, f)
            picture = _picture(item, cam.shape)
            if cam.ndim == 1:
                viz.heatmap_figure(cam[None], rng, fs=fs, channel_names=["CAM"], cmap=cmap,
                                   titles=title, path=folder / f"{stem}.png")
            elif cam.ndim == 2:
                _image(picture, cam, rng, fs, channel_names, title, cmap, 0.5,
                       folder / f"{stem}.png")
            else:
                fps = _at(video_fps_list, i) if video_fps_list is not None else 10
                volume = picture if picture is not None else cam[None]
                _gif(volume, cam, rng, folder / f"{stem}.gif", show_frames, fps=fps, cmap=cmap,
                     title=title, channel=0 if len(volume) not in (1, 3) else None)


def single_channel(builder, data_list, data_labels, predicted_probs_dict, cams_dict,
                   explainer_types, target_classes, target_layers, target_item_ids=None,
                   desired_channels=None, data_names=None, contrastive_foils=None,
                   bar_ranges_dict=None, results_dir_path=None, data_sampling_freq=None,
                   channel_names=None, video_fps_list=None, video_channel_idx=-1,
                   show_single_video_frames=False, fig_size=None, cmap="inferno",
                   **_unused) -> list:
    """See CamBuilder.single_channel_output_display."""
    items, names, labels, ids = _selection(data_list, data_names, data_labels, target_item_ids)
    made: list = []
    for explainer, layer, t, f, key in _settings(builder, explainer_types, target_classes,
                                                 target_layers, contrastive_foils):
        for i in ids:
            cam, rng = _unit_cam(cams_dict[key][i]), _range(bar_ranges_dict, i, key)
            title = _title(builder, names[i], t, f, predicted_probs_dict[key][i], _at(labels, i))
            folder = _folder_path(results_dir_path, names[i])
            if cam.ndim == 3:
                made += _video_channels(items[i], cam, rng, title, folder,
                                        _stem("", explainer, layer, t, f), channel_names,
                                        video_fps_list, i, show_single_video_frames, cmap,
                                        video_channel_idx)
                continue
            signals = _signals(items[i], cam)
            stem = _stem("channel_graphs_", explainer, layer, t, f)
            made.append(viz.signal_figure(
                signals, cam, rng, fs=data_sampling_freq, channels=desired_channels,
                channel_names=_channel_names(channel_names, desired_channels, len(signals)),
                cmap=cmap, suptitle=title, figsize=fig_size,
                path=None if folder is None else folder / f"{stem}.png"))
    return made


def overlapped(builder, data_list, data_labels, predicted_probs_dict, cams_dict,
               explainer_types, target_classes, target_layers, target_item_ids=None,
               data_names=None, contrastive_foils=None, bar_ranges_dict=None,
               results_dir_path=None, data_sampling_freq=None, channel_names=None,
               video_fps_list=None, show_single_video_frames=False, fig_size=None, alpha=0.3,
               cmap="inferno", **_unused) -> list:
    """See CamBuilder.overlapped_output_display."""
    items, names, labels, ids = _selection(data_list, data_names, data_labels, target_item_ids)
    made: list = []
    for explainer, layer, t, f, key in _settings(builder, explainer_types, target_classes,
                                                 target_layers, contrastive_foils):
        shown = []
        for i in ids:
            cam, rng = _unit_cam(cams_dict[key][i]), _range(bar_ranges_dict, i, key)
            title = _title(builder, names[i], t, f, predicted_probs_dict[key][i], _at(labels, i))
            if cam.ndim == 3:
                folder = _folder_path(results_dir_path, names[i])
                stem = _stem("", explainer, layer, t, f) + "_overlapped"
                made += _volume(_needs_picture(items[i], cam.shape), cam, rng, title, folder, stem,
                                video_fps_list, i, show_single_video_frames, cmap, alpha)
                continue
            if cam.ndim == 1:  # a multichannel signal shown as an image, the CAM on every row
                signals = _signals(items[i], cam)
                picture, cam = signals[None], np.broadcast_to(cam, signals.shape)
            else:
                picture = _needs_picture(items[i], cam.shape)
            shown.append((picture, cam, rng, title))
        stem = _stem("results_", explainer, layer, t, f)
        for n, batch in enumerate(_same_shapes(shown)):
            pictures, maps, rngs, titles = (list(column) for column in zip(*batch))
            suffix = "" if n == 0 else f"_{n}"
            path = (None if results_dir_path is None
                    else Path(results_dir_path) / f"{stem}{suffix}.png")
            as_signal = data_sampling_freq is not None or channel_names is not None
            made.append(viz.overlay_figure(
                np.stack(pictures), np.stack(maps), np.stack(rngs), cmap=cmap, alpha=alpha,
                channel=0 if len(pictures[0]) not in (1, 3) else None,
                fs=data_sampling_freq, titles=titles, figsize=fig_size, path=path,
                channel_names=_row_names(channel_names, maps[0]) if as_signal else None))
    return made


def tokens(builder, token_data_list, data_labels, predicted_probs_dict, cams_dict,
           explainer_types, target_classes, target_layers, target_item_ids=None,
           data_names=None, contrastive_foils=None, bar_ranges_dict=None,
           results_dir_path=None, fig_size=None, cmap="inferno", **_unused) -> list:
    """See CamBuilder.text_output_display."""
    if not all(isinstance(entry, list) for entry in token_data_list):
        token_data_list = [token_data_list]  # the tokens of one item
    _, names, labels, ids = _selection(token_data_list, data_names, data_labels,
                                       target_item_ids)
    made = []
    for explainer, layer, t, f, key in _settings(builder, explainer_types, target_classes,
                                                 target_layers, contrastive_foils):
        for i in ids:
            cam, rng = _unit_cam(cams_dict[key][i]), _range(bar_ranges_dict, i, key)
            words = [str(w) for w in token_data_list[i]]
            title = _title(builder, names[i], t, f, predicted_probs_dict[key][i], _at(labels, i))
            path = (None if results_dir_path is None else Path(results_dir_path)
                    / f"{_stem('barplot_', explainer, layer, t, f)}_{_folder(names[i])}.png")
            made.append(viz.token_figure(words, cam, rng, cmap=cmap, title=title, path=path,
                                         **({"width": fig_size[0]} if fig_size else {})))
    return made


# ---- what to draw -----------------------------------------------------------------------
def _settings(builder, explainer_types, target_classes, target_layers, contrastive_foils):
    """(explainer, layer, target, foil, key) in SignalGrad-CAM's loop order."""
    for explainer in as_list(explainer_types):
        for layer in as_list(target_layers):
            for t in as_list(target_classes):
                for f in as_list(contrastive_foils):
                    yield explainer, layer, t, f, builder.get_item_key(explainer, layer, t, f)


def _selection(data_list, data_names, data_labels, target_item_ids):
    items = as_list(data_list)
    ids = list(range(len(items))) if target_item_ids is None else list(target_item_ids)
    return items, _names(data_names, len(items)), as_list(data_labels), ids


def _names(data_names, n: int) -> list[str]:
    return [f"item{i}" for i in range(n)] if data_names is None else as_list(data_names)


def _at(values, i: int):
    """values[i], or the single value given for every item."""
    values = as_list(values)
    return values[i] if len(values) > 1 else values[0]


def _unit_cam(cam) -> np.ndarray:
    """A get_cam map (0..255; 1D maps (T, 1)) as viz takes it: in [0, 1], 1D maps (T,)."""
    cam = np.asarray(cam, dtype=np.float32) / 255
    return cam[:, 0] if cam.ndim == 2 and cam.shape[1] == 1 else cam


def _range(ranges, i: int, key: str | None = None) -> tuple[float, float]:
    """Item ``i``'s (min, max) from get_cam's score ranges (the dictionary when ``key`` is
    given); without them, the colours span the 0..1 scaled map."""
    if ranges is None:
        return 0.0, 1.0
    low, high = ranges[key] if key is not None else ranges
    return float(np.ravel(low)[i]), float(np.ravel(high)[i])


def _title(builder, name: str, target: int, foil, probs, label) -> str:
    """``"item0 · af (p=0.93) · true normal"``; contrastive ``"af vs normal (p=0.93 vs 0.05)"``;
    a regression foil value ``"af (p=0.93) vs 0.5"``."""
    probs = np.ravel(probs)
    names = builder.class_names
    if foil is None:
        head = f"{class_label(target, names)} (p={probs[0]:.2f})"
    elif builder.is_regression_network:
        head = f"{class_label(target, names)} (p={probs[0]:.2f}) vs {foil:g}"
    else:
        head = (f"{class_label(target, names)} vs {class_label(foil, names)} "
                f"(p={probs[0]:.2f} vs {probs[1]:.2f})")
    true = "" if label is None else f" · true {class_label(int(label), names)}"
    return f"{name} · {head}{true}"


# ---- files ------------------------------------------------------------------------------
def _folder(name) -> str:
    return str(name).replace(" ", "_").lower()


def _folder_path(results_dir, name) -> Path | None:
    return None if results_dir is None else Path(results_dir) / _folder(name)


def _stem(prefix: str, explainer: str, layer: str, target, foil) -> str:
    safe_layer = re.sub(r"\W", "_", layer)  # as SignalGrad-CAM names files
    stem = f"{prefix}{explainer}_{safe_layer}_class{target}"
    return stem if foil is None else f"{stem}_foil{foil}"


# ---- pictures ---------------------------------------------------------------------------
def _picture(item, cam_shape: tuple[int, ...]) -> np.ndarray | None:
    """The original item as (C, *cam_shape) when its axes fit the map, else None."""
    item = to_numpy(item)
    if item.ndim == 0 or item.dtype.kind not in "biuf":
        return None
    if item.shape == cam_shape:
        return item[None]
    if item.shape[1:] == cam_shape:
        return item
    if item.shape[:-1] == cam_shape:
        return np.moveaxis(item, -1, 0)
    return None


def _needs_picture(item, shape: tuple[int, ...]) -> np.ndarray:
    picture = _picture(item, shape)
    if picture is None:
        raise InputError(f"An item of shape {to_numpy(item).shape} does not fit its map of "
                         f"shape {shape}: pass the items given to get_cam (channels first or "
                         "last).")
    return picture


def _signals(item, cam: np.ndarray) -> np.ndarray:
    """The item as signals (C, T) for a 1D map (T,) or a signal-image map (C, T)."""
    if cam.ndim == 2:
        picture = _picture(item, cam.shape)
        if picture is not None and len(picture) == 1:
            return picture[0]
    return _needs_picture(item, cam.shape[-1:] if cam.ndim == 1 else cam.shape)


def _image(picture, cam, rng, fs, channel_names, title, cmap, alpha, path) -> None:
    if picture is None:
        viz.heatmap_figure(cam, rng, fs=fs, channel_names=_row_names(channel_names, cam),
                           cmap=cmap, titles=title, path=path)
        return
    signal_axes = fs is not None or channel_names is not None
    viz.overlay_figure(picture, cam, rng, cmap=cmap, alpha=alpha,
                       channel=0 if len(picture) not in (1, 3) else None, fs=fs,
                       channel_names=_row_names(channel_names, cam) if signal_axes else None,
                       titles=title, path=path)


def _volume(volume, cam, rng, title, folder, stem, video_fps_list, i, frames, cmap, alpha,
            channel=None) -> list:
    """A GIF (and frame PNGs) under ``folder``, or without a folder a montage figure."""
    fps = _at(video_fps_list, i) if video_fps_list is not None else None
    if channel is None and len(volume) not in (1, 3):
        channel = 0
    if folder is None:
        return [viz.montage_figure(volume, cam, rng, fps=fps, cmap=cmap, alpha=alpha,
                                   channel=channel, title=title)]
    return _gif(volume, cam, rng, folder / f"{stem}.gif", frames, fps=fps or 10, cmap=cmap,
                alpha=alpha, channel=channel, title=title)


def _gif(volume, cam, rng, path: Path, frames: bool, **options) -> list[Path]:
    """viz.volume_gif; with ``frames``, each frame also as SignalGrad-CAM names it:
    ``<gif path without .gif>/frame_<k>.png``. Returns the GIF's path, then the frames'."""
    written = viz.volume_gif(volume, cam, rng, path, **options,
                             frames_dir=path.with_suffix("") if frames else None)
    return written[:1] + [p.replace(p.with_name(f"frame_{k}.png"))
                          for k, p in enumerate(written[1:])]


def _video_channels(item, cam, rng, title, folder, stem, channel_names, video_fps_list, i,
                    frames, cmap, channel_axis) -> list:
    """One overlay per channel of a video / volume (SignalGrad-CAM's single-channel 3D view)."""
    volume = to_numpy(item)
    volume = np.moveaxis(volume, channel_axis, 0) if volume.ndim == 4 else volume[None]
    made = []
    for c in range(len(volume)):
        name = channel_names[c] if channel_names is not None else str(c)
        made += _volume(volume, cam, rng, f"{title} · {name}", folder, f"{stem}_{name}",
                        video_fps_list, i, frames, cmap, 0.3, channel=c)
    return made


def _channel_names(names, desired, n_channels: int) -> list[str] | None:
    """A name for every channel from SignalGrad-CAM's names of all or of the chosen ones."""
    if names is None:
        return None
    names = [str(n) for n in names]
    if len(names) == n_channels:
        return names
    full = [f"Channel {c}" for c in range(n_channels)]
    for c, name in zip(desired if desired is not None else range(n_channels), names):
        full[c] = name
    return full


def _row_names(names, cam: np.ndarray) -> list[str] | None:
    return [str(n) for n in names] if names is not None and len(names) == len(cam) else None


def _same_shapes(shown: Sequence[tuple]) -> list[list[tuple]]:
    """The entries grouped by picture and map shape (one figure per group)."""
    groups: dict[tuple, list[tuple]] = {}
    for entry in shown:
        groups.setdefault((entry[0].shape, entry[1].shape), []).append(entry)
    return list(groups.values())
