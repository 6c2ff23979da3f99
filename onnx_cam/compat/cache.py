"""The facade's converted models, shared by every builder and call of the same model.

Converting a framework model to ONNX (and building its Explainer) costs far more than one
get_cam call, and notebooks rebuild their builder in every cell run. Exports are kept here,
keyed by :mod:`.fingerprint` (the model's weights by content and its architecture) and by
how the builder feeds it (input shape and dtype, output, runtime), so an unchanged model is
never exported twice and a changed one never served a stale export. The cache keeps the
``max_entries`` most recently used exports (each holds an ONNX Runtime session).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from ..explainer import Explainer


class ExportCache:
    """A bounded least-recently-used map from a model's key to its Explainer."""

    def __init__(self, max_entries: int = 8):
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, Explainer] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], Explainer]) -> Explainer:
        """The Explainer cached under ``key``, else ``build()``'s, cached."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        explainer = build()  # outside the lock: an export takes seconds
        with self._lock:
            self._entries[key] = explainer
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return explainer

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


export_cache = ExportCache()
