"""ROAD's imputation systems in 2D and 3D, solved by conjugate gradients preconditioned by one
geometric multigrid V-cycle, matrix-free, channel by channel, in one compiled call.

The system (perturb.linear_impute): each removed position equals the weighted mean of its
in-bounds neighbours, the kept positions fixed, with `neighbour_stencil` weights: the product
over axes of (1, 2, 1), the centre left out, normalised. That stencil is separable: the sum of
a grid's weighted neighbours is (B(e) - 2**n e) / (4**n - 2**n), B the (1, 2, 1) filter along
every axis in turn, 3n additions per position instead of 3**n - 1 gathers. Every grid level is
held dense, padded by one zero position per side and flattened, so each pass of B is one loop
over a flat range that the compiler vectorises, the same code for any number of axes. The
levels lie one after another in flat arrays; a vector is zero outside its level's unknowns.

A coarse level takes every second position per axis; a coarse position is unknown if its fine
position and that one's 2n face neighbours are unknown (or out of bounds); asking the whole
3**n block moves coarse boundaries further inside the fine ones and costs 10-20 % more
iterations on ROAD's masks. A coarse level's operator is the same normalised stencil, which
approximates (2h)^2 times the Laplacian where the fine one approximates h^2 times it:
restriction is full weighting (B / 4**n) times 4, prolongation multilinear interpolation (B /
2**n of the coarse values placed on the fine grid), both masked to the unknowns. Jacobi sweeps
(self-adjoint in the energy inner product, convergent since the weights are positive and sum
to at most the diagonal) before and after each coarse correction, and Jacobi sweeps from zero
on the coarsest level, make the V-cycle symmetric positive definite, as conjugate gradients
need, whatever the masks. The V-cycle runs in float32, the conjugate gradients in float64.
"""

from __future__ import annotations

from functools import cache

import numba
import numpy as np

COARSEST_POSITIONS = 64      # a level of at most this many positions is the coarsest
SMOOTHING_SWEEPS = 2         # Jacobi sweeps before and after each coarse correction
COARSEST_SWEEPS = 8          # Jacobi sweeps from zero on the coarsest level
RELATIVE_RESIDUAL = 1e-8     # per channel, of the right-hand side's norm: errors ~1e-8
MAX_ITERATIONS = 100         # beyond (never seen; about 20 are needed): solve directly


@numba.njit(cache=True)
def _binomial(out, tmp, src, strides):
    """out = src (one level, flat) filtered by (1, 2, 1) along every axis (strides): exact at
    the level's inner positions, finite garbage on its padding. Slices, not negative offsets,
    so that the loops vectorise."""
    ndim, row = strides.shape[0], src
    for a in range(ndim):
        dst = out if (ndim - 1 - a) % 2 == 0 else tmp
        s = strides[a]
        n = src.shape[0] - 2 * s
        below, centre, above, into = row[:n], row[s:s + n], row[2 * s:], dst[s:s + n]
        for i in range(n):
            into[i] = below[i] + centre[i] + centre[i] + above[i]
        row = dst


@numba.njit(cache=True)
def _jacobi(e, rhs, filtered, tmp, inverse_diagonal, strides, weight, centre):
    """One Jacobi sweep on a level: e = (rhs + weighted neighbours of e) / diagonal."""
    _binomial(filtered, tmp, e, strides)
    for i in range(e.shape[0]):
        e[i] = inverse_diagonal[i] * (rhs[i] + weight * (filtered[i] - centre * e[i]))


@numba.njit(cache=True)
def _apply(out, e, filtered, tmp, unknown, diagonal, strides, weight, centre):
    """out = A e on a level's unknowns (A e = diagonal * e - weighted neighbours), 0 elsewhere."""
    _binomial(filtered, tmp, e, strides)
    for i in range(e.shape[0]):
        out[i] = unknown[i] * (diagonal[i] * e[i] - weight * (filtered[i] - centre * e[i]))


@numba.njit(cache=True, fastmath=True)
def _dot(a, b):
    """a . b, summed in any order (fastmath), so that the loop vectorises."""
    s = 0.0
    for i in range(a.shape[0]):
        s += a[i] * b[i]
    return s


@numba.njit(cache=True, fastmath=True)
def _step(x, r, rhs, direction, product, alpha):
    """x += alpha direction, r -= alpha product, rhs = r (the next V-cycle's, float32), in one
    pass; returns r . r."""
    squared = 0.0
    for i in range(r.shape[0]):
        x[i] += alpha * direction[i]
        r[i] -= alpha * product[i]
        rhs[i] = r[i]
        squared += r[i] * r[i]
    return squared


@numba.njit(cache=True)
def _v_cycle(e, rhs, work, filtered, tmp, unknown, diagonal, inverse_diagonal, start, strides,
             coarse, fine, pairs, weight, centre, restrict, prolong, smoothing, coarsest):
    """e = one V-cycle applied to rhs, both on the first level (the other levels' parts of
    e and rhs are work space); one channel."""
    levels = start.shape[0] - 1
    for lv in range(levels):
        lo, hi = start[lv], start[lv + 1]
        level = (e[lo:hi], rhs[lo:hi], filtered[lo:hi], tmp[lo:hi])
        inverse = inverse_diagonal[lo:hi]
        for i in range(hi - lo):
            level[0][i] = inverse[i] * level[1][i]
        for _ in range((coarsest if lv == levels - 1 else smoothing) - 1):
            _jacobi(*level, inverse, strides[lv], weight, centre)
        if lv == levels - 1:
            break
        residual = work[lo:hi]
        _apply(residual, level[0], level[2], level[3], unknown[lo:hi], diagonal[lo:hi],
               strides[lv], weight, centre)
        for i in range(hi - lo):
            residual[i] = level[1][i] - residual[i]
        _binomial(level[2], level[3], residual, strides[lv])
        for n in range(pairs[lv], pairs[lv + 1]):
            rhs[coarse[n]] = restrict * filtered[fine[n]]
    for lv in range(levels - 2, -1, -1):
        lo, hi = start[lv], start[lv + 1]
        level = (e[lo:hi], rhs[lo:hi], filtered[lo:hi], tmp[lo:hi])
        placed, mask = work[lo:hi], unknown[lo:hi]
        placed[:] = 0.0
        for n in range(pairs[lv], pairs[lv + 1]):
            work[fine[n]] = e[coarse[n]]
        _binomial(level[2], level[3], placed, strides[lv])
        for i in range(hi - lo):
            level[0][i] += mask[i] * prolong * level[2][i]
        for _ in range(smoothing):
            _jacobi(*level, inverse_diagonal[lo:hi], strides[lv], weight, centre)


@numba.njit(cache=True)
def _conjugate_gradients(kept, unknown, diagonal, inverse_diagonal, start, strides, coarse,
                         fine, pairs, weight, centre, restrict, prolong, relative_residual,
                         max_iterations, smoothing, coarsest):
    """(solution (C, first level's padded positions, 0 but on the unknowns), converged),
    channel by channel; `kept` (C, first level's padded positions) holds the kept values,
    zero elsewhere. The iteration runs in float64; the V-cycle, which only needs to be a
    fixed symmetric positive definite approximation, in float32 (half the memory traffic,
    twice the vector width)."""
    channels, size, m = kept.shape[0], start[-1], start[1]
    single = np.float32
    e, rhs, work = np.zeros(size, single), np.zeros(size, single), np.zeros(size, single)
    filtered, tmp = np.zeros(size, single), np.zeros(size, single)
    cycle = (unknown.astype(single), diagonal.astype(single), inverse_diagonal.astype(single),
             start, strides, coarse, fine, pairs, single(weight), single(centre),
             single(restrict), single(prolong), smoothing, coarsest)
    x = np.zeros((channels, m))
    r, direction, product = np.zeros(m), np.zeros(m), np.zeros(m)
    neighbours, scratch = np.zeros(m), np.zeros(m)
    first = (unknown[:m], diagonal[:m], strides[0])
    for c in range(channels):
        _binomial(neighbours, scratch, kept[c], strides[0])   # the weighted kept neighbours
        for i in range(m):
            r[i] = first[0][i] * weight * neighbours[i]
            rhs[i] = r[i]
        squared = _dot(r, r)
        tolerance = relative_residual * np.sqrt(squared)
        converged = False
        rz = 0.0
        for iteration in range(max_iterations + 1):
            if np.sqrt(squared) <= tolerance:
                converged = True
                break
            if iteration == max_iterations:
                break
            _v_cycle(e, rhs, work, filtered, tmp, *cycle)
            rz_next = _dot(r, e[:m])
            beta = rz_next / rz if iteration > 0 and rz > 0 else 0.0
            for i in range(m):
                direction[i] = e[i] + beta * direction[i]
            rz = rz_next
            _apply(product, direction, neighbours, scratch, *first, weight, centre)
            curvature = _dot(product, direction)
            squared = _step(x[c], r, rhs, direction, product,
                            rz / curvature if curvature > 0 else 0.0)
        if not converged:
            return x, False
    return x, True


@cache
def _grid(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For a level of this shape, on its padded grid, flat (read-only): the sum of each
    position's in-bounds neighbour weights (B of the in-bounds indicator is the product over
    axes of 4, 3 at an edge, 2 on an axis of length 1; the padding is left to the unknown
    indicator) and its inverse (0 where it is not positive), the strides, and for each
    position p of the next coarser padded grid its fine position 2p - 1 (clipped on the
    coarse padding, which is never unknown)."""
    ndim, filtered = len(shape), np.ones(())
    for n in shape:
        inside = np.pad(np.ones(n), 1)
        filtered = np.multiply.outer(filtered, np.convolve(inside, [1.0, 2.0, 1.0], "same"))
    padded = tuple(n + 2 for n in shape)
    coarse = np.indices(tuple((n + 1) // 2 + 2 for n in shape)).reshape(ndim, -1)
    fine = np.ravel_multi_index(np.clip(2 * coarse - 1, 0, np.array(padded)[:, None] - 1), padded)
    strides = np.cumprod((1,) + padded[:0:-1])[::-1].astype(np.int64)
    diagonal = ((filtered - 2.0 ** ndim) / (4.0 ** ndim - 2.0 ** ndim)).ravel()
    inverse = np.divide(1.0, diagonal, out=np.zeros_like(diagonal), where=diagonal > 0)
    for array in (diagonal, inverse, strides, fine):
        array.flags.writeable = False
    return diagonal, inverse, strides, fine


def _padded(array: np.ndarray, value) -> np.ndarray:
    out = np.full(tuple(n + 2 for n in array.shape), value, array.dtype)
    out[(slice(1, -1),) * array.ndim] = array
    return out


def _coarser(removed: np.ndarray) -> np.ndarray:
    """Every second position per axis, unknown if it and its 2n face neighbours are unknown
    (or out of bounds): and-ed strided slices of the grid padded with True."""
    padded = _padded(removed, True)
    centre = [slice(1, n + 1, 2) for n in removed.shape]
    coarse = padded[tuple(centre)].copy()
    for axis, n in enumerate(removed.shape):
        for first in (0, 2):
            coarse &= padded[tuple(centre[:axis] + [slice(first, first + n, 2)]
                                   + centre[axis + 1:])]
    return coarse


def _hierarchy(removed: np.ndarray) -> dict:
    """The levels packed one after another: unknown indicator, diagonal and its inverse (0
    outside the unknowns), where each level starts and its strides; coarse unknowns and their
    fine positions (level l + 1's between pairs[l] and pairs[l + 1])."""
    ndim = removed.ndim
    states, diagonals, inverses, starts, strides = [], [], [], [0], []
    coarse, fine, pairs = [], [], [0]
    fine_of = None       # the finer level's fine position of each of this level's positions
    while True:
        state = _padded(removed, False).ravel()
        if fine_of is not None:
            local = np.flatnonzero(state)
            coarse.append(starts[-1] + local)
            fine.append(starts[-2] + fine_of[local])
            pairs.append(pairs[-1] + len(local))
        diagonal, inverse, level_strides, fine_of = _grid(removed.shape)
        states.append(state)
        diagonals.append(diagonal)
        inverses.append(inverse)
        strides.append(level_strides)
        starts.append(starts[-1] + state.size)
        if removed.size <= COARSEST_POSITIONS or max(removed.shape) <= 2:
            break
        below = _coarser(removed)
        if not below.any():
            break
        removed = below
    unknown = np.concatenate(states).astype(np.float64)
    empty = np.zeros(0, np.int64)
    return dict(unknown=unknown, diagonal=unknown * np.concatenate(diagonals),
                inverse_diagonal=unknown * np.concatenate(inverses),
                start=np.array(starts), strides=np.stack(strides),
                coarse=np.concatenate(coarse or [empty]), fine=np.concatenate(fine or [empty]),
                pairs=np.array(pairs), weight=1.0 / (4.0 ** ndim - 2.0 ** ndim),
                centre=2.0 ** ndim)


def solve_imputation(item: np.ndarray, removed: np.ndarray) -> np.ndarray | None:
    """(C, *spatial) float64: `item` (C, *spatial) float64 with its removed positions
    imputed (`neighbour_stencil`'s weights, perturb.py), or None if conjugate gradients did
    not converge. Some position must be kept."""
    ndim, channels = removed.ndim, item.shape[0]
    packed = _hierarchy(removed)
    kept = np.zeros((channels, packed["start"][1]))
    inner = (slice(None),) + (slice(1, -1),) * ndim
    kept.reshape(channels, *(n + 2 for n in removed.shape))[inner] = np.where(removed, 0.0, item)
    solution, converged = _conjugate_gradients(
        kept, restrict=4.0 / 4.0 ** ndim, prolong=1.0 / 2.0 ** ndim,
        relative_residual=RELATIVE_RESIDUAL, max_iterations=MAX_ITERATIONS,
        smoothing=SMOOTHING_SWEEPS, coarsest=COARSEST_SWEEPS, **packed)
    if not converged:
        return None
    solution += kept           # the solution is 0 on the kept positions, `kept` on the removed
    return solution.reshape(channels, *(n + 2 for n in removed.shape))[inner]
