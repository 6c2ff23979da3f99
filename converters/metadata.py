"""The ``metadata_props`` keys the converters write and onnx-cam reads."""

from __future__ import annotations

import onnx

LAYER_MAP_KEY = "onnx_cam.layer_map"      # JSON {framework layer name: ONNX tensor name}
CLASS_NAMES_KEY = "onnx_cam.class_names"  # JSON [class name, ...]
SOURCE_KEY = "onnx_cam.source"            # "torch" or "keras"
LAYOUT_KEY = "onnx_cam.layout"            # "channels_first" (N, C, *spatial) or "channels_last"
CHANNELS_FIRST, CHANNELS_LAST = "channels_first", "channels_last"


def set_metadata(model: onnx.ModelProto, meta: dict[str, str]) -> None:
    """Write ``meta`` into ``model.metadata_props``, replacing entries with the same keys."""
    kept = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
