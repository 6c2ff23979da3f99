"""The reference for ROAD's imputation (onnx_cam.metrics.linear_impute), shared by the metric
and solver tests."""

from __future__ import annotations

import itertools

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import spsolve


def reference_impute(item: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's linear imputation written out: each removed position = the mean of its in-bounds
    neighbours weighted by the product over axes of (1, 2, 1) (1/6 and 1/12 in 2D), the kept
    ones fixed; one sparse system assembled position by position, solved by SuperLU."""
    shape = removed.shape
    unknown = [tuple(p) for p in np.argwhere(removed)]
    if not unknown:
        return item.astype(np.float64)
    if len(unknown) == removed.size:  # nothing kept: each channel's mean
        return np.broadcast_to(item.mean(axis=tuple(range(1, item.ndim)), keepdims=True),
                               item.shape).astype(np.float64)
    index = {p: i for i, p in enumerate(unknown)}
    offsets = [o for o in itertools.product((-1, 0, 1), repeat=len(shape)) if any(o)]
    weight = {o: 2.0 ** sum(v == 0 for v in o) for o in offsets}
    total = sum(weight.values())
    rows, cols, vals = [], [], []
    rhs = np.zeros((len(unknown), item.shape[0]))
    for i, p in enumerate(unknown):
        for o in offsets:
            q = tuple(a + b for a, b in zip(p, o))
            if not all(0 <= q[d] < shape[d] for d in range(len(shape))):
                continue
            w = weight[o] / total
            rows.append(i), cols.append(i), vals.append(w)
            if removed[q]:
                rows.append(i), cols.append(index[q]), vals.append(-w)
            else:
                rhs[i] += w * item[(slice(None), *q)]
    system = sparse.csc_matrix((vals, (rows, cols)), shape=(len(unknown),) * 2)
    out = item.astype(np.float64).copy()
    out[:, removed] = np.asarray(spsolve(system, rhs)).reshape(len(unknown), -1).T
    return out
