"""The ``metadata_props`` keys the converters write and onnx-cam reads."""

from __future__ import annotations

import json
import os

import onnx

LAYER_MAP_KEY = "onnx_cam.layer_map"      # JSON {framework layer name: ONNX tensor name}
CLASS_NAMES_KEY = "onnx_cam.class_names"  # JSON [class name, ...]
SOURCE_KEY = "onnx_cam.source"            # "torch" or "keras"
LAYOUT_KEY = "onnx_cam.layout"            # "channels_first" (N, C, *spatial) or "channels_last"
# JSON {framework layer name: nearest kept name, or ""}: names left out of the layer map
# because their tensor's values differ from the layer's output (export_torch checks them)
UNVERIFIED_KEY = "onnx_cam.unverified_layers"
CHANNELS_FIRST, CHANNELS_LAST = "channels_first", "channels_last"


def set_metadata(model: onnx.ModelProto, meta: dict[str, str]) -> None:
    """Write ``meta`` into ``model.metadata_props``, replacing entries with the same keys."""
    kept = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)


def annotate(model: onnx.ModelProto, *, source: str, layout: str, layer_map: dict[str, str],
             class_names=None, extra: dict[str, str] | None = None,
             path: str | os.PathLike[str] | None = None) -> onnx.ModelProto:
    """Record what onnx-cam needs to know in the model's metadata; save it when `path` is set."""
    meta = {LAYER_MAP_KEY: json.dumps(layer_map, sort_keys=True), SOURCE_KEY: source,
            LAYOUT_KEY: layout, **(extra or {})}
    if class_names is not None:
        meta[CLASS_NAMES_KEY] = json.dumps([str(c) for c in class_names])
    set_metadata(model, meta)
    if path is not None:
        onnx.save(model, os.fspath(path))
    return model
