"""Dataset statistics of maps: mean and standard-deviation map per class, aligned by input
position, and each map's distance from its class mean."""

from __future__ import annotations

import numpy as np

from .options import MetricError


class ClassStatistics:
    """Per-class running sums of maps; add batches as they come (an audit's chunks).

    >>> stats = ClassStatistics()
    >>> stats.add(res.cam("gradcam"), res.targets)
    >>> stats.mean(3), stats.std(3), stats.count(3)
    """

    def __init__(self):
        self._sums: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        self.shape: tuple[int, ...] | None = None

    def add(self, maps: np.ndarray, labels) -> ClassStatistics:
        """Accumulate `maps` (rows, *spatial), each counted under its label (rows,)."""
        maps = np.asarray(maps, np.float64)
        labels = np.asarray(labels)
        if len(maps) != len(labels):
            raise MetricError(f"{len(maps)} maps but {len(labels)} labels; give one per map.")
        if self.shape is None:
            self.shape = maps.shape[1:]
        elif maps.shape[1:] != self.shape:
            raise MetricError(f"Maps of shape {maps.shape[1:]} cannot join statistics of maps "
                              f"{self.shape}: class statistics align maps by input position, "
                              "so resize the inputs (or maps) to one size first.")
        for label in np.unique(labels):
            chosen = maps[labels == label]
            n, total, squares = self._sums.get(int(label), (0, 0.0, 0.0))
            self._sums[int(label)] = (n + len(chosen), total + chosen.sum(0),
                                      squares + (chosen * chosen).sum(0))
        return self

    @property
    def classes(self) -> list[int]:
        return sorted(self._sums)

    def count(self, label: int) -> int:
        return self._entry(label)[0]

    def mean(self, label: int) -> np.ndarray:
        """The class's mean map (*spatial)."""
        n, total, _ = self._entry(label)
        return total / n

    def std(self, label: int) -> np.ndarray:
        """The class's population standard deviation per position (*spatial)."""
        n, total, squares = self._entry(label)
        mean = total / n
        return np.sqrt(np.maximum(squares / n - mean * mean, 0.0))

    def distance(self, maps: np.ndarray, labels) -> np.ndarray:
        """Root-mean-square distance of each map from its class's mean map, (rows,)."""
        maps = np.asarray(maps, np.float64)
        if maps.shape[1:] != self.shape:
            raise MetricError(f"Maps of shape {maps.shape[1:]} cannot be compared with class "
                              f"means of shape {self.shape}.")
        means = np.stack([self.mean(int(label)) for label in np.asarray(labels)])
        return np.sqrt(((maps - means) ** 2).reshape(len(maps), -1).mean(axis=1))

    def _entry(self, label: int):
        if int(label) not in self._sums:
            raise MetricError(f"No map of class {label} was added; classes seen: "
                              f"{self.classes}.")
        return self._sums[int(label)]
