"""ROAD's imputation systems in 2D and 3D, solved by conjugate gradients preconditioned by one
geometric multigrid V-cycle, matrix-free, all channels at once, in one compiled call.

The system (perturb.linear_impute): each removed position equals the weighted mean of its
in-bounds neighbours (`neighbour_stencil` weights), the kept positions fixed. Every grid level
is held padded by one position per side and flattened, so a neighbour is one flat offset and
the code is the same for any number of axes. The levels lie one after another in flat arrays;
a vector is zero outside its level's unknowns, so applying the operator needs no bounds checks.

A coarse level takes every second position per axis; a coarse position is unknown if the
3**n block around its fine position is all unknown (or out of bounds). Its operator is the
same normalised stencil, which approximates (2h)^2 times the Laplacian where the fine one
approximates h^2 times it: restriction is full weighting times 4, prolongation multilinear
interpolation (the transpose, up to a factor), both masked to the unknowns. Forward
Gauss-Seidel before and backward after each coarse correction, and symmetric Gauss-Seidel
sweeps from zero on the coarsest level, make the V-cycle symmetric positive definite, as
conjugate gradients need, whatever the masks.
"""

from __future__ import annotations

import itertools

import numba
import numpy as np
from scipy import ndimage

OUTSIDE, KEPT, UNKNOWN = 0, 1, 2
COARSEST_POSITIONS = 64      # a level of at most this many positions is the coarsest
SMOOTHING_SWEEPS = 1         # Gauss-Seidel sweeps before and after each coarse correction
COARSEST_SWEEPS = 8          # symmetric Gauss-Seidel sweeps on the coarsest level
RELATIVE_RESIDUAL = 1e-8     # per channel, of the right-hand side's norm: errors ~1e-8
MAX_ITERATIONS = 100         # beyond (never seen; about 20 are needed): solve directly


@numba.njit(cache=True)
def _sweep(e, rhs, unknowns, diagonal, lo, hi, offsets, weights, backward):
    """One Gauss-Seidel sweep over the unknowns lo:hi, in flat order or reversed."""
    for c in range(e.shape[0]):
        for step in range(hi - lo):
            n = hi - 1 - step if backward else lo + step
            i = unknowns[n]
            s = rhs[c, i]
            for k in range(offsets.shape[0]):
                s += weights[k] * e[c, i + offsets[k]]
            e[c, i] = s / diagonal[n]


@numba.njit(cache=True)
def _residual(out, rhs, e, unknowns, diagonal, lo, hi, offsets, weights):
    """out = rhs - A e on the unknowns lo:hi (A e = diagonal * e - weighted neighbours)."""
    for c in range(e.shape[0]):
        for n in range(lo, hi):
            i = unknowns[n]
            s = rhs[c, i] - diagonal[n] * e[c, i]
            for k in range(offsets.shape[0]):
                s += weights[k] * e[c, i + offsets[k]]
            out[c, i] = s


@numba.njit(cache=True)
def _v_cycle(out, rhs, e, residual, h_unknowns, h_diagonal, h_fine, h_start, h_offsets,
             h_block, weights, restrict, prolong, h_state, smoothing, coarsest):
    """out = one V-cycle applied to rhs (the first level's part of the work arrays)."""
    levels = h_start.shape[0] - 1
    for c in range(e.shape[0]):
        for n in range(h_start[levels]):
            e[c, h_unknowns[n]] = 0.0
    for lv in range(levels - 1):
        lo, hi = h_start[lv], h_start[lv + 1]
        for _ in range(smoothing):
            _sweep(e, rhs, h_unknowns, h_diagonal, lo, hi, h_offsets[lv], weights, False)
        _residual(residual, rhs, e, h_unknowns, h_diagonal, lo, hi, h_offsets[lv], weights)
        block = h_block[lv]
        for c in range(e.shape[0]):
            for n in range(hi, h_start[lv + 2]):
                s = 0.0
                for k in range(block.shape[0]):
                    s += restrict[k] * residual[c, h_fine[n] + block[k]]
                rhs[c, h_unknowns[n]] = s
    lo, hi = h_start[levels - 1], h_start[levels]
    for _ in range(coarsest):
        _sweep(e, rhs, h_unknowns, h_diagonal, lo, hi, h_offsets[levels - 1], weights, False)
        _sweep(e, rhs, h_unknowns, h_diagonal, lo, hi, h_offsets[levels - 1], weights, True)
    for lv in range(levels - 2, -1, -1):
        lo, hi = h_start[lv], h_start[lv + 1]
        block = h_block[lv]
        for c in range(e.shape[0]):
            for n in range(hi, h_start[lv + 2]):
                v = e[c, h_unknowns[n]]
                for k in range(block.shape[0]):
                    j = h_fine[n] + block[k]
                    if h_state[j] == UNKNOWN:
                        e[c, j] += prolong[k] * v
        for _ in range(smoothing):
            _sweep(e, rhs, h_unknowns, h_diagonal, lo, hi, h_offsets[lv], weights, True)
    for c in range(e.shape[0]):
        for n in range(h_start[1]):
            out[c, h_unknowns[n]] = e[c, h_unknowns[n]]


@numba.njit(cache=True)
def _conjugate_gradients(values, h_unknowns, h_diagonal, h_fine, h_start, h_offsets, h_block,
                         weights, restrict, prolong, h_state, size, relative_residual,
                         max_iterations, smoothing, coarsest):
    """(solution (C, m) on the first level's unknowns, converged); `values` (C, padded
    positions of the first level) holds the kept values."""
    channels, m = values.shape[0], h_start[1]
    offsets = h_offsets[0]
    e = np.zeros((channels, size))
    rhs = np.zeros((channels, size))
    residual = np.zeros((channels, size))
    x = np.zeros((channels, m))
    r = np.zeros((channels, m))
    for c in range(channels):                 # the right-hand side: weighted kept neighbours
        for n in range(m):
            i = h_unknowns[n]
            s = 0.0
            for k in range(offsets.shape[0]):
                if h_state[i + offsets[k]] == KEPT:
                    s += weights[k] * values[c, i + offsets[k]]
            r[c, n] = s
    tolerance = np.zeros(channels)
    for c in range(channels):
        tolerance[c] = relative_residual * np.sqrt(np.sum(r[c] ** 2))
    direction = np.zeros((channels, size))     # lives on the first level's padded grid
    z = np.zeros((channels, size))
    product = np.zeros((channels, m))
    rz = np.zeros(channels)

    def precondition():
        for c in range(channels):
            for n in range(m):
                rhs[c, h_unknowns[n]] = r[c, n]
        _v_cycle(z, rhs, e, residual, h_unknowns, h_diagonal, h_fine, h_start, h_offsets,
                 h_block, weights, restrict, prolong, h_state, smoothing, coarsest)

    precondition()
    for c in range(channels):
        for n in range(m):
            i = h_unknowns[n]
            direction[c, i] = z[c, i]
            rz[c] += r[c, n] * z[c, i]
    for _ in range(max_iterations):
        converged = True
        for c in range(channels):
            if np.sqrt(np.sum(r[c] ** 2)) > tolerance[c]:
                converged = False
        if converged:
            return x, True
        for c in range(channels):
            curvature = 0.0
            for n in range(m):
                i = h_unknowns[n]
                s = h_diagonal[n] * direction[c, i]
                for k in range(offsets.shape[0]):
                    s -= weights[k] * direction[c, i + offsets[k]]
                product[c, n] = s
                curvature += s * direction[c, i]
            alpha = rz[c] / curvature if curvature > 0 else 0.0
            for n in range(m):
                x[c, n] += alpha * direction[c, h_unknowns[n]]
                r[c, n] -= alpha * product[c, n]
        precondition()
        for c in range(channels):
            rz_next = 0.0
            for n in range(m):
                rz_next += r[c, n] * z[c, h_unknowns[n]]
            beta = rz_next / rz[c] if rz[c] > 0 else 0.0
            for n in range(m):
                i = h_unknowns[n]
                direction[c, i] = z[c, i] + beta * direction[c, i]
            rz[c] = rz_next
    return x, False


def _flat_offsets(offsets: np.ndarray, padded_shape: tuple[int, ...]) -> np.ndarray:
    strides = np.cumprod((1,) + padded_shape[:0:-1])[::-1]
    return (offsets @ strides).astype(np.int64)


@numba.njit(cache=True)
def _diagonal(unknowns, state, offsets, weights):
    out = np.zeros(unknowns.shape[0])
    for n in range(unknowns.shape[0]):
        for k in range(offsets.shape[0]):
            if state[unknowns[n] + offsets[k]] != OUTSIDE:
                out[n] += weights[k]
    return out


def _hierarchy(removed: np.ndarray, stencil: tuple[np.ndarray, np.ndarray]) -> dict:
    """The levels packed one after another: states, unknowns (flat order within a level,
    positions in the packed arrays), their diagonals and fine positions (the fine padded
    position of a coarse unknown), where each level's unknowns start, and per level the
    stencil's and the 3**n block's flat offsets."""
    ndim = removed.ndim
    block = np.array(list(itertools.product((-1, 0, 1), repeat=ndim)))
    states, unknowns, diagonals, fine, starts, offsets, blocks = [], [], [], [], [0], [], []
    base, finer = 0, None
    while True:
        state = np.pad(removed.astype(np.int8) + KEPT, 1)
        level_offsets = _flat_offsets(stencil[0], state.shape)
        local = np.flatnonzero(state == UNKNOWN)
        if finer is None:
            fine.append(np.zeros(len(local), np.int64))
        else:   # padded coarse coordinate p is fine padded coordinate 2p - 1
            coords = np.array(np.unravel_index(local, state.shape))
            fine.append(finer[0] + np.ravel_multi_index(2 * coords - 1, finer[1]))
        states.append(state.ravel())
        unknowns.append(base + local)
        diagonals.append(_diagonal(local, states[-1], level_offsets, stencil[1]))
        starts.append(starts[-1] + len(local))
        offsets.append(level_offsets)
        blocks.append(_flat_offsets(block, state.shape))
        finer, base = (base, state.shape), base + state.size
        if removed.size <= COARSEST_POSITIONS or max(removed.shape) <= 2:
            break
        coarse = ndimage.minimum_filter(removed, 3, mode="constant", cval=True)
        removed = coarse[(slice(None, None, 2),) * ndim]
        if not removed.any():
            break
    return dict(h_unknowns=np.concatenate(unknowns), h_diagonal=np.concatenate(diagonals),
                h_fine=np.concatenate(fine), h_start=np.array(starts),
                h_offsets=np.stack(offsets), h_block=np.stack(blocks),
                h_state=np.concatenate(states), size=base)


def solve_imputation(item: np.ndarray, removed: np.ndarray,
                     stencil: tuple[np.ndarray, np.ndarray]) -> np.ndarray | None:
    """(C, m): the values of the m removed positions of `item` (C, *spatial) float64, in flat
    order, or None if conjugate gradients did not converge. Some position must be kept.
    stencil: the neighbours' offsets (K, ndim) and weights (K,)."""
    ndim = removed.ndim
    block = np.array(list(itertools.product((-1, 0, 1), repeat=ndim)))
    full_weighting = np.prod(np.where(block == 0, 0.5, 0.25), axis=1)
    packed = _hierarchy(removed, stencil)
    padded = np.pad(item, [(0, 0)] + [(1, 1)] * ndim).reshape(item.shape[0], -1)
    solution, converged = _conjugate_gradients(
        padded, weights=stencil[1], restrict=4.0 * full_weighting,
        prolong=2.0 ** ndim * full_weighting, relative_residual=RELATIVE_RESIDUAL,
        max_iterations=MAX_ITERATIONS, smoothing=SMOOTHING_SWEEPS, coarsest=COARSEST_SWEEPS,
        **packed)
    return solution if converged else None
