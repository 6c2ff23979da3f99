"""Input segments for LIME and KernelSHAP: fixed windows (any dimension) or SLIC superpixels."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def window_segments(spatial: tuple[int, ...], window: tuple[int, ...]) -> np.ndarray:
    """Labels (*spatial): non-overlapping blocks of `window`, numbered in C order."""
    blocks = np.meshgrid(*[np.arange(s) // w for s, w in zip(spatial, window)], indexing="ij")
    return np.ravel_multi_index(blocks, [math.ceil(s / w) for s, w in zip(spatial, window)])


def slic(image: np.ndarray, n_segments: int, compactness: float,
         iterations: int = 10) -> np.ndarray:
    """SLIC superpixels (Achanta et al., TPAMI 2012) of a (C, H, W) image -> labels (H, W).

    k-means on (channel values, position) from a regular grid of about n_segments centres;
    the distance is |colour|^2 + (compactness * |position| / grid step)^2, colours in units
    of the image's standard deviation (inputs are normalised tensors, not Lab). Every
    connected piece of a cluster becomes a segment; pieces smaller than a quarter of the
    mean segment are joined to a neighbour, as scikit-image's enforce_connectivity.
    """
    c, h, w = image.shape
    step = math.sqrt(h * w / n_segments)
    colours = image.reshape(c, -1).T.astype(np.float64) / (image.std() or 1.0)
    grid = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    places = np.stack(grid, axis=-1).reshape(-1, 2).astype(np.float64)
    centre_places = np.stack(np.meshgrid(np.arange(step / 2, h, step),
                                         np.arange(step / 2, w, step), indexing="ij"),
                             axis=-1).reshape(-1, 2)
    nearest = np.minimum(np.round(centre_places).astype(int), [h - 1, w - 1])
    centre_colours = colours[nearest[:, 0] * w + nearest[:, 1]]
    scale = compactness / step
    points = np.concatenate([colours, places * scale], axis=1)
    centres = np.concatenate([centre_colours, centre_places * scale], axis=1)
    for _ in range(iterations):
        distances = (centres ** 2).sum(axis=1) - 2 * points @ centres.T
        assigned = distances.argmin(axis=1)
        counts = np.bincount(assigned, minlength=len(centres))
        sums = np.zeros_like(centres)
        np.add.at(sums, assigned, points)
        used = counts > 0
        centres[used] = sums[used] / counts[used, None]
    pieces = _connected_pieces(assigned.reshape(h, w))
    return _merge_small(pieces, h * w / n_segments / 4)


def _connected_pieces(clusters: np.ndarray) -> np.ndarray:
    """Labels 0 .. count - 1: every connected piece of every cluster apart."""
    labels = np.empty(clusters.shape, np.int64)
    found = 0
    for cluster in np.unique(clusters):
        pieces, count = ndimage.label(clusters == cluster)
        inside = pieces > 0
        labels[inside] = pieces[inside] - 1 + found
        found += count
    return labels


def _merge_small(labels: np.ndarray, minimum: float) -> np.ndarray:
    """Pieces smaller than `minimum`, smallest first, joined to the neighbour they share the
    longest border with; labels renumbered 0 .. count - 1."""
    sizes = np.bincount(labels.ravel())
    boxes = [list(box) for box in ndimage.find_objects(labels + 1)]
    for piece in np.argsort(sizes, kind="stable"):
        if sizes[piece] >= minimum:  # grown by pieces joined to it, or large from the start
            continue
        box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in boxes[piece])
        local = labels[box]
        mine = local == piece
        border = local[ndimage.binary_dilation(mine) & ~mine]
        if border.size == 0:
            continue
        values, counts = np.unique(border, return_counts=True)
        target = values[counts.argmax()]
        local[mine] = target
        sizes[target] += sizes[piece]
        sizes[piece] = 0
        boxes[target] = [slice(min(a.start, b.start), max(a.stop, b.stop))
                         for a, b in zip(boxes[target], boxes[piece])]
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape)
