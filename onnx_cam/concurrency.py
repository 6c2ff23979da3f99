"""Sharing one Explainer between threads: build-once caches and safe Numba kernel calls.

ONNX Runtime's ``InferenceSession.run`` may be called from several threads at once. What is
not thread-safe is building the sessions and graphs they are cached under (two threads
would build the same one twice) and Numba's ``workqueue`` threading layer, which aborts the
process when two threads launch parallel kernels at once. Its default layers here (TBB,
else OpenMP) are thread-safe; ``workqueue`` is what Numba falls back to when neither is
installed, and what ``NUMBA_THREADING_LAYER=workqueue`` asks for.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from contextlib import contextmanager
from typing import Generic, TypeVar

import numba

V = TypeVar("V")

_KERNEL_LOCK = threading.RLock()


class OnceCache(Generic[V]):
    """A dict whose values are built at most once, however many threads ask at once.

    Threads asking for different keys build in parallel; threads asking for the same key
    wait for the first one's value.
    """

    def __init__(self):
        self._values: dict[Hashable, V] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], V]) -> V:
        try:
            return self._values[key]
        except KeyError:
            pass
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._values:
                self._values[key] = build()
        return self._values[key]

    def __getitem__(self, key: Hashable) -> V:
        return self._values[key]

    def __setitem__(self, key: Hashable, value: V) -> None:
        """Replace a value (e.g. to wrap a cached session); not for first builds."""
        self._values[key] = value

    def __contains__(self, key: Hashable) -> bool:
        return key in self._values

    def __iter__(self):
        return iter(list(self._values))

    def __len__(self) -> int:
        return len(self._values)


def kernels_thread_safe() -> bool:
    """Whether Numba's threading layer in use lets several threads launch kernels at once;
    False until the first parallel kernel has run (the layer is chosen then)."""
    try:
        return numba.threading_layer() != "workqueue"
    except ValueError:  # no parallel kernel has run yet
        return False


@contextmanager
def kernel_guard():
    """Serialise the Numba kernels run inside when the threading layer is not thread-safe
    (and the very first launch, which picks the layer)."""
    if kernels_thread_safe():
        yield
        return
    with _KERNEL_LOCK:
        yield
