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

import threading
from functools import cache
from typing import NamedTuple

import numba
import numpy as np

COARSEST_POSITIONS = 64      # a level of at most this many positions is the coarsest
SMOOTHING_SWEEPS = 2         # Jacobi sweeps before and after each coarse correction
COARSEST_SWEEPS = 8          # Jacobi sweeps from zero on the coarsest level
RELATIVE_RESIDUAL = 1e-8     # per channel, of the right-hand side's norm: errors ~1e-8
MAX_ITERATIONS = 100         # beyond (never seen; ROAD needs 7 to 13): solve directly


@numba.njit(cache=True)
def _binomial(out, tmp, src, strides):
    """out = src (one level, flat) filtered by (1, 2, 1) along every axis (strides): exact at
    the level's inner positions, bounded by 4**n max |src| on its padding (each pass zeroes
    the ends it does not reach, so no value from an earlier call feeds back). Slices, not
    negative offsets, so that the loops vectorise."""
    ndim, row = strides.shape[0], src
    for a in range(ndim):
        dst = out if (ndim - 1 - a) % 2 == 0 else tmp
        s = strides[a]
        n = src.shape[0] - 2 * s
        below, centre, above, into = row[:n], row[s:s + n], row[2 * s:], dst[s:s + n]
        for i in range(n):
            into[i] = below[i] + centre[i] + centre[i] + above[i]
        dst[:s] = 0.0
        dst[s + n:] = 0.0
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
def _conjugate_gradients(filled, first_diagonal, unknown, diagonal, inverse_diagonal, singles,
                         doubles, start, strides, coarse, fine, pairs, weight, centre, restrict,
                         prolong, relative_residual, max_iterations, smoothing, coarsest):
    """Whether all channels converged; `filled` (C, first level's padded positions), the kept
    values and 0 elsewhere, gets the solution added on the unknowns, channel by channel. The
    iteration runs in float64; the V-cycle, which only needs to be a fixed symmetric positive
    definite approximation, in float32 (half the memory traffic, twice the vector width), on
    the float32 levels (unknown, diagonal, inverse_diagonal) and work rows `singles`;
    `doubles` are float64 work rows of the first level's length."""
    e, rhs, work, filtered, tmp = singles[0], singles[1], singles[2], singles[3], singles[4]
    r, direction, product, neighbours, scratch = (doubles[0], doubles[1], doubles[2],
                                                  doubles[3], doubles[4])
    rhs[:] = 0.0                 # the coarse levels' right-hand sides are 0 off their unknowns
    single = np.float32
    cycle = (unknown, diagonal, inverse_diagonal, start, strides, coarse, fine, pairs,
             single(weight), single(centre), single(restrict), single(prolong), smoothing,
             coarsest)
    m = start[1]
    first = (unknown[:m], first_diagonal, strides[0])
    for c in range(filled.shape[0]):
        _binomial(neighbours, scratch, filled[c], strides[0])   # the weighted kept neighbours
        for i in range(m):
            r[i] = first[0][i] * weight * neighbours[i]
            rhs[i] = r[i]
        squared = _dot(r, r)
        tolerance = relative_residual * np.sqrt(squared)
        rz = 0.0
        for iteration in range(max_iterations + 1):
            if np.sqrt(squared) <= tolerance:
                break
            if iteration == max_iterations:
                return False
            _v_cycle(e, rhs, work, filtered, tmp, *cycle)
            rz_next = _dot(r, e[:m])
            beta = rz_next / rz if iteration > 0 and rz > 0 else 0.0
            for i in range(m):
                direction[i] = e[i] + beta * direction[i]
            rz = rz_next
            _apply(product, direction, neighbours, scratch, *first, weight, centre)
            curvature = _dot(product, direction)
            squared = _step(filled[c], r, rhs, direction, product,
                            rz / curvature if curvature > 0 else 0.0)
    return True


class _Grid(NamedTuple):
    """A level's padded grid, flat (read-only arrays)."""
    diagonal: np.ndarray        # each position's in-bounds neighbour weights, summed
    single_diagonal: np.ndarray     # the same in float32
    single_inverse: np.ndarray      # its inverse in float32, 0 where it is not positive
    strides: np.ndarray
    fine_of: np.ndarray     # per position p of the next coarser padded grid: 2p - 1 here


@cache
def _grid(shape: tuple[int, ...]) -> _Grid:
    """B of the in-bounds indicator is the product over axes of 4 (3 at an edge, 2 on an axis
    of length 1); the diagonal on the padding is left to the unknown indicator, and so are
    the fine positions of the coarse padding (clipped)."""
    ndim, filtered = len(shape), np.ones(())
    for n in shape:
        inside = np.pad(np.ones(n), 1)
        filtered = np.multiply.outer(filtered, np.convolve(inside, [1.0, 2.0, 1.0], "same"))
    padded = tuple(n + 2 for n in shape)
    coarse = np.indices(tuple((n + 1) // 2 + 2 for n in shape)).reshape(ndim, -1)
    fine = np.ravel_multi_index(np.clip(2 * coarse - 1, 0, np.array(padded)[:, None] - 1), padded)
    diagonal = ((filtered - 2.0 ** ndim) / (4.0 ** ndim - 2.0 ** ndim)).ravel()
    inverse = np.divide(1.0, diagonal, out=np.zeros_like(diagonal), where=diagonal > 0)
    grid = _Grid(diagonal, diagonal.astype(np.float32), inverse.astype(np.float32),
                 np.cumprod((1,) + padded[:0:-1])[::-1].astype(np.int64), fine)
    for array in grid:
        array.flags.writeable = False
    return grid


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
    """The levels packed one after another: unknown (bool), each level's shape, where it
    starts, its strides; coarse unknowns and their fine positions (level l + 1's between
    pairs[l] and pairs[l + 1])."""
    ndim = removed.ndim
    states, shapes, starts, strides, coarse, fine, pairs = [], [], [0], [], [], [], [0]
    fine_of = None       # the finer level's fine position of each of this level's positions
    while True:
        state = _padded(removed, False).ravel()
        if fine_of is not None:
            local = np.flatnonzero(state)
            coarse.append(starts[-1] + local)
            fine.append(starts[-2] + fine_of[local])
            pairs.append(pairs[-1] + len(local))
        grid = _grid(removed.shape)
        fine_of = grid.fine_of
        states.append(state)
        shapes.append(removed.shape)
        strides.append(grid.strides)
        starts.append(starts[-1] + state.size)
        if removed.size <= COARSEST_POSITIONS or max(removed.shape) <= 2:
            break
        below = _coarser(removed)
        if not below.any():
            break
        removed = below
    empty = np.zeros(0, np.int64)
    return dict(unknown=np.concatenate(states), shapes=shapes, start=np.array(starts),
                strides=np.stack(strides), coarse=np.concatenate(coarse or [empty]),
                fine=np.concatenate(fine or [empty]), pairs=np.array(pairs),
                weight=1.0 / (4.0 ** ndim - 2.0 ** ndim), centre=2.0 ** ndim)


class _Workspace(threading.local):
    """Work arrays reused by one thread's solves: fresh ones of a 3D level's size come from
    the allocator unmapped and page-fault on first touch, which was 40 % of a 3D solve."""
    singles = np.zeros(0, np.float32)
    doubles = np.zeros(0)

    def take(self, size: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        """(8, size) float32 and (5, m) float64 rows, C-contiguous, of undefined content."""
        if self.singles.size < 8 * size:
            self.singles = np.zeros(8 * size, np.float32)
        if self.doubles.size < 5 * m:
            self.doubles = np.zeros(5 * m)
        return self.singles[:8 * size].reshape(8, size), self.doubles[:5 * m].reshape(5, m)


_workspace = _Workspace()


def solve_imputation(item: np.ndarray, removed: np.ndarray) -> np.ndarray | None:
    """(C, *spatial) float64: `item` (C, *spatial), any float type, with its removed positions
    imputed (`neighbour_stencil`'s weights, perturb.py), or None if conjugate gradients did
    not converge. Some position must be kept."""
    ndim, channels = removed.ndim, item.shape[0]
    levels = _hierarchy(removed)
    start, shapes = levels["start"], levels.pop("shapes")
    singles, doubles = _workspace.take(start[-1], start[1])
    unknown, diagonal, inverse = singles[5], singles[6], singles[7]
    np.copyto(unknown, levels.pop("unknown"))
    for lo, hi, shape in zip(start[:-1], start[1:], shapes):
        grid = _grid(shape)
        np.multiply(unknown[lo:hi], grid.single_diagonal, out=diagonal[lo:hi])
        np.multiply(unknown[lo:hi], grid.single_inverse, out=inverse[lo:hi])
    filled = np.zeros((channels, start[1]))
    inner = (slice(None),) + (slice(1, -1),) * ndim
    np.copyto(filled.reshape(channels, *(n + 2 for n in removed.shape))[inner], item,
              where=~removed)
    converged = _conjugate_gradients(
        filled, _grid(removed.shape).diagonal, unknown, diagonal, inverse, singles[:5], doubles,
        restrict=4.0 / 4.0 ** ndim, prolong=1.0 / 2.0 ** ndim,
        relative_residual=RELATIVE_RESIDUAL, max_iterations=MAX_ITERATIONS,
        smoothing=SMOOTHING_SWEEPS, coarsest=COARSEST_SWEEPS, **levels)
    return filled.reshape(channels, *(n + 2 for n in removed.shape))[inner] if converged \
        else None
