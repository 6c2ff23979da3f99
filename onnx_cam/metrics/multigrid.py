"""ROAD's imputation systems in 2D and 3D, solved by conjugate gradients preconditioned by one
geometric multigrid V-cycle with Galerkin coarse operators, channel by channel, in one
compiled call.

The system (perturb.linear_impute): each removed position equals the weighted mean of its
in-bounds neighbours, the kept positions fixed, with `neighbour_stencil` weights (below): the
product over axes of (1, 2, 1), the centre left out, normalised. That stencil is separable:
the sum of a grid's weighted neighbours is (B(e) - 2**n e) / (4**n - 2**n), B the (1, 2, 1)
filter along every axis in turn, 3n additions per position instead of 3**n - 1 gathers; on
the first (finest) level the operator is applied that way, matrix-free. Every grid level is
held dense, padded by at least one zero position per side and flattened, so each pass of B is
one loop over a flat range that the compiler vectorises, the same code for any number of
axes. The levels lie one after another in flat arrays; a vector is zero outside its level's
unknowns.
Only the box of the removed positions and their neighbours is solved (`_crop`).

A coarse level takes every second position per axis and covers the whole finer grid: an axis
of n positions has n // 2 + 1 coarse ones, the last one outside the grid when n is even (in
the finer level's padding, which is two positions wide on that side), so that multilinear
interpolation reproduces constants up to the grid's edge, where the system has no boundary
values. A coarse position is unknown if its finer position (clipped into the grid) is: each
coarse unknown then has its own finer unknown that only it interpolates to in full, so
interpolation P (multilinear: B / 2**n of the coarse values placed on the finer grid, masked
to its unknowns) has full rank. Restriction is P's transpose and a coarse level's operator is
the Galerkin product P^T A P, symmetric positive definite whatever the masks; it couples each
coarse position with its 3**n block, so coarse levels hold a stencil per position, computed
once per mask one axis at a time (P is a product of one-axis interpolations). The product
follows the masks' boundaries exactly: re-discretising the stencil on the coarse grid instead
shifts kept positions and grid edges by a finer step and took twice the iterations.

Jacobi sweeps smooth before and after each coarse correction and, from zero, solve the
coarsest level. On the first level the weights are positive and sum to at most the diagonal,
so plain Jacobi converges; on a coarse level each position is divided by the larger of its
diagonal and SAFE_DIAGONAL times half its row's absolute sum, which bounds the iteration's
eigenvalues below 2 (Gershgorin), so the sweeps converge too. Symmetric sweeps around each
coarse correction make the V-cycle symmetric positive definite, as conjugate gradients need.
The V-cycle runs in float32, the conjugate gradients in float64.
"""

from __future__ import annotations

import itertools
import threading
from functools import cache, lru_cache
from typing import NamedTuple

import numba
import numpy as np

COARSEST_UNKNOWNS = 16       # a level with at most this many unknowns is the coarsest
SMOOTHING_SWEEPS = 2         # Jacobi sweeps before and after each coarse correction ...
COARSE_SMOOTHING_SWEEPS = 1  # ... on the first level, and on the coarse ones
COARSEST_SWEEPS = 8          # Jacobi sweeps from zero on the coarsest level
SAFE_DIAGONAL = 1.05         # a coarse level's Jacobi divisor: >= this x half the row's |sum|
RELATIVE_RESIDUAL = 1e-8     # per channel, of the right-hand side's norm: errors ~1e-8
MAX_ITERATIONS = 100         # beyond (never seen; ROAD needs 5 to 8): solve directly
CROP_STEPS = 8               # the solved box's sides: multiples of 1 / this of the grid's


@numba.njit(cache=True)
def _binomial(out, tmp, src, strides):
    """out = src (one level, flat) filtered by (1, 2, 1) along every axis (strides): exact at
    every position one step or more inside the level's padded box (whatever src holds on
    the box's faces), bounded by 4**n max |src| on the faces (each pass zeroes the ends it
    does not reach, so no value from an earlier call feeds back). Slices, not negative
    offsets, so that the loops vectorise."""
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
    """One Jacobi sweep on the first level: e = (rhs + weighted neighbours of e) / diagonal."""
    _binomial(filtered, tmp, e, strides)
    for i in range(e.shape[0]):
        e[i] = inverse_diagonal[i] * (rhs[i] + weight * (filtered[i] - centre * e[i]))


@numba.njit(cache=True)
def _apply(out, e, filtered, tmp, unknown, diagonal, strides, weight, centre):
    """out = A e on the first level's unknowns (diagonal * e - weighted neighbours), 0
    elsewhere."""
    _binomial(filtered, tmp, e, strides)
    for i in range(e.shape[0]):
        out[i] = unknown[i] * (diagonal[i] * e[i] - weight * (filtered[i] - centre * e[i]))


@numba.njit(cache=True)
def _stencil_apply(out, e, stencil, offsets, reach):
    """out = A e on a coarse level: stencil (3**n, level positions) holds A's row at each
    position (0 off the unknowns), offsets the flat offsets of its 3**n entries; positions
    within `reach` of the ends are padding."""
    n = e.shape[0] - 2 * reach
    into = out[reach:reach + n]
    into[:] = 0.0
    for k in range(offsets.shape[0]):
        row, moved = stencil[k, reach:reach + n], e[reach + offsets[k]:reach + offsets[k] + n]
        for i in range(n):
            into[i] += row[i] * moved[i]
    out[:reach] = 0.0
    out[reach + n:] = 0.0


@numba.njit(cache=True)
def _smooth(lv, e, rhs, filtered, tmp, inverse, stencil, strides, offsets, reach, weight,
            centre):
    """One Jacobi sweep on level lv."""
    if lv == 0:
        _jacobi(e, rhs, filtered, tmp, inverse, strides, weight, centre)
        return
    _stencil_apply(filtered, e, stencil, offsets, reach)
    for i in range(e.shape[0]):
        e[i] += inverse[i] * (rhs[i] - filtered[i])


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
def _v_cycle(e, rhs, work, filtered, tmp, unknown, diagonal, inverse, stencils, start,
             strides, offsets, reach, coarse, fine, pairs, weight, centre, transfer, smoothing,
             coarse_smoothing, coarsest):
    """e = one V-cycle applied to rhs, both on the first level (the other levels' parts of
    e and rhs are work space); one channel. stencils: the coarse levels' (3**n, positions)
    blocks one after another, flat."""
    levels, size = start.shape[0] - 1, offsets.shape[1]

    def level(lv):
        lo, hi = start[lv], start[lv + 1]
        if lv == 0:         # the first level's operator is applied matrix-free
            return lo, hi, stencils[:0].reshape(size, 0)
        at = size * (lo - start[1])
        return lo, hi, stencils[at:at + size * (hi - lo)].reshape(size, hi - lo)

    for lv in range(levels):
        lo, hi, block = level(lv)
        inv = inverse[lo:hi]
        here = (e[lo:hi], rhs[lo:hi], filtered[lo:hi], tmp[lo:hi])
        for i in range(hi - lo):
            here[0][i] = inv[i] * here[1][i]
        sweeps = coarsest if lv == levels - 1 else smoothing if lv == 0 else coarse_smoothing
        for _ in range(sweeps - 1):
            _smooth(lv, *here, inv, block, strides[lv], offsets[lv], reach[lv], weight, centre)
        if lv == levels - 1:
            break
        residual = work[lo:hi]
        if lv == 0:
            _apply(residual, here[0], here[2], here[3], unknown[lo:hi], diagonal[lo:hi],
                   strides[lv], weight, centre)
        else:
            _stencil_apply(residual, here[0], block, offsets[lv], reach[lv])
        for i in range(hi - lo):
            residual[i] = here[1][i] - residual[i]
        _binomial(here[2], here[3], residual, strides[lv])
        for n in range(pairs[lv], pairs[lv + 1]):
            rhs[coarse[n]] = transfer * filtered[fine[n]]
    for lv in range(levels - 2, -1, -1):
        lo, hi, block = level(lv)
        here = (e[lo:hi], rhs[lo:hi], filtered[lo:hi], tmp[lo:hi])
        placed, mask = work[lo:hi], unknown[lo:hi]
        placed[:] = 0.0
        for n in range(pairs[lv], pairs[lv + 1]):
            work[fine[n]] = e[coarse[n]]
        _binomial(here[2], here[3], placed, strides[lv])
        for i in range(hi - lo):
            here[0][i] += mask[i] * transfer * here[2][i]
        for _ in range(smoothing if lv == 0 else coarse_smoothing):
            _smooth(lv, *here, inverse[lo:hi], block, strides[lv], offsets[lv], reach[lv],
                    weight, centre)


@numba.njit(cache=True)
def _coarsen_axis(out, src, outer, length, coarse_length, inner, coarse_inner, fine_inner, step,
                  first, unknown, diagonal, neighbour, offsets):
    """out = P_a^T A P_a, P_a multilinear interpolation along one axis alone (identity along
    the others), its entries up to the centre (the others follow by symmetry). out (3**n,
    outer x coarse_length x inner) and src (3**n, outer x length x inner) are stencils on
    padded grids that differ along that axis alone, coarse_inner / fine_inner its positions
    inside the padding, step the stride of its offset in the 3**n entries. With `first`, src
    is the first level's operator, read in place from unknown (0 / 1), diagonal (0 off the
    unknowns), the neighbour weights and their flat offsets."""
    size = out.shape[0]
    centre, total = (size - 1) // 2, outer * length * inner
    out[:centre + 1] = 0.0
    for k in range(centre + 1):
        o, to = (k // step) % 3 - 1, out[k]
        for s in range(-1, 2):
            # the coarse positions whose fine position 2q - 1 + s is inside the padding
            q_lo, q_hi = (2 if s < 0 else 1), min(coarse_inner, (fine_inner + 1 - s) // 2)
            for d in range(-1, 2):
                t = s + d - 2 * o
                if t < -1 or t > 1:
                    continue
                kk = k + (d - o) * step
                w = np.float32((1.0 if s == 0 else 0.5) * (1.0 if t == 0 else 0.5)
                               * (-neighbour[kk] if first and kk != centre else 1.0))
                row = src[kk]
                for p in range(outer):
                    for q in range(q_lo, q_hi + 1):
                        at = (p * coarse_length + q) * inner
                        fine = (p * length + 2 * q - 1 + s) * inner
                        if not first and inner == 1:
                            to[at] += w * row[fine]
                            continue
                        # slices, not offset indices, so that the loops vectorise
                        if not first:
                            into, here = to[at:at + inner], row[fine:fine + inner]
                            for i in range(inner):
                                into[i] += w * here[i]
                        elif kk == centre:
                            into, here = to[at:at + inner], diagonal[fine:fine + inner]
                            for i in range(inner):
                                into[i] += w * here[i]
                        else:   # positions whose neighbour lies off the level are padding
                            there = fine + offsets[kk]
                            lo, hi = max(0, -there), min(inner, total - there)
                            into, here = to[at + lo:at + hi], unknown[fine + lo:fine + hi]
                            moved = unknown[there + lo:there + hi]
                            for i in range(hi - lo):
                                into[i] += w * here[i] * moved[i]


@numba.njit(cache=True)
def _mirror(stencil, shape):
    """stencil (3**n, positions of the padded `shape`): the entries past the centre from those
    before it, A(j, j + o) = A(j + o, j); positions within reach of the ends are padding."""
    ndim, size = shape.shape[0], stencil.shape[0]
    strides = np.ones(ndim, np.int64)
    for b in range(ndim - 2, -1, -1):
        strides[b] = strides[b + 1] * shape[b + 1]
    reach, count = strides.sum(), stencil.shape[1]
    for k in range((size + 1) // 2, size):
        rest, offset = k, 0
        for b in range(ndim - 1, -1, -1):
            offset += (rest % 3 - 1) * strides[b]
            rest //= 3
        n = count - 2 * reach
        into, mirrored = stencil[k], stencil[size - 1 - k, reach + offset:reach + offset + n]
        into[:reach] = 0.0
        into[count - reach:] = 0.0
        into[reach:reach + n] = mirrored


@numba.njit(cache=True, nogil=True)
def _galerkin(stencils, ping, pong, unknown, inverse, diagonal, neighbour, start, shapes,
              inners, offsets, reach, safe):
    """The coarse levels' stencils P^T A P (into `stencils`, flat, level after level) and
    their Jacobi divisors' inverses (into `inverse`), axis by axis through the work arrays
    ping and pong (3**n x the first level's positions each); shapes and inners (levels,
    ndim): padded and inner shapes; diagonal: the first level's, 0 off its unknowns."""
    size, ndim = offsets.shape[1], shapes.shape[1]
    for lv in range(start.shape[0] - 2):
        at = size * max(start[lv] - start[1], 0)     # (the first level's: read in place)
        src = stencils[at:at + size * (start[lv + 1] - start[lv]) * (lv > 0)]
        shape = shapes[lv].copy()
        for a in range(ndim):
            outer, inner = 1, 1
            for b in range(a):
                outer *= shape[b]
            for b in range(a + 1, ndim):
                inner *= shape[b]
            count = outer * shapes[lv + 1][a] * inner
            if a == ndim - 1:
                at = size * (start[lv + 1] - start[1])
                out = stencils[at:at + size * count]
            else:
                out = (ping if a % 2 == 0 else pong)[:size * count]
            _coarsen_axis(out.reshape(size, count), src.reshape(size, -1), outer, shape[a],
                          shapes[lv + 1][a], inner, inners[lv + 1][a], inners[lv][a],
                          3 ** (ndim - 1 - a), lv == 0 and a == 0, unknown, diagonal, neighbour,
                          offsets[0])
            src = out
            shape[a] = shapes[lv + 1][a]
            _mirror(out.reshape(size, count), shape)
        lo, hi, r = start[lv + 1], start[lv + 2], reach[lv + 1]
        n, block = hi - lo - 2 * r, src.reshape(size, hi - lo)
        state, inv, absolute = unknown[lo + r:lo + r + n], inverse[lo:hi], ping[:n]  # ping: unused
        absolute[:] = 0.0
        for k in range(size):       # rows and columns of the kept positions are 0
            into, there = block[k, r:r + n], unknown[lo + r + offsets[lv + 1, k]:]
            for i in range(n):
                into[i] *= state[i] * there[i]
                absolute[i] += abs(into[i])
        inv[:] = 0.0
        centre = block[(size - 1) // 2, r:r + n]
        for i in range(n):
            if state[i] != 0:
                inv[r + i] = 1.0 / max(centre[i], 0.5 * safe * absolute[i])


@numba.njit(cache=True, nogil=True)
def _conjugate_gradients(filled, first_diagonal, singles, doubles, start, strides, offsets,
                         reach, unknown, diagonal, inverse, stencils, coarse, fine, pairs, weight,
                         centre, transfer, relative_residual, max_iterations, smoothing,
                         coarse_smoothing, coarsest):
    """Whether all channels converged; `filled` (C, first level's padded positions), the kept
    values and 0 elsewhere, gets the solution added on the unknowns, channel by channel. The
    iteration runs in float64; the V-cycle, which only needs to be a fixed symmetric positive
    definite approximation, in float32 (half the memory traffic, twice the vector width), on
    the float32 levels (unknown, diagonal, inverse, stencils) and work rows `singles`;
    `doubles` are float64 work rows of the first level's length."""
    e, rhs, work, filtered, tmp = singles[0], singles[1], singles[2], singles[3], singles[4]
    r, direction, product, neighbours, scratch = (doubles[0], doubles[1], doubles[2],
                                                  doubles[3], doubles[4])
    rhs[:] = 0.0                 # the coarse levels' right-hand sides are 0 off their unknowns
    single = np.float32
    cycle = (unknown, diagonal, inverse, stencils, start, strides, offsets, reach, coarse,
             fine, pairs, single(weight), single(centre), single(transfer), smoothing,
             coarse_smoothing, coarsest)
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


def _padded_length(n: int) -> int:
    """One padding position below, one above (two when n is even: the coarse level's last
    position lies there), so that position 2p + 1 is coarse position p's."""
    return 2 * (n // 2 + 1) + 1


def _coarse_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(n // 2 + 1 for n in shape)


class _Grid(NamedTuple):
    """A level's padded grid, flat (read-only arrays)."""
    padded: tuple[int, ...]
    diagonal: np.ndarray        # each position's in-bounds neighbour weights, summed
    single_diagonal: np.ndarray     # the same in float32
    single_inverse: np.ndarray      # its inverse in float32, 0 where it is not positive
    strides: np.ndarray
    offsets: np.ndarray     # flat offsets of the 3**n stencil entries, (-1,..,-1) first


@lru_cache(maxsize=256)
def _grid(shape: tuple[int, ...]) -> _Grid:
    """B of the in-bounds indicator is the product over axes of 4 (3 at an edge, 2 on an axis
    of length 1); the diagonal on the padding is left to the unknown indicator."""
    ndim, filtered = len(shape), np.ones(())
    padded = tuple(_padded_length(n) for n in shape)
    for n, length in zip(shape, padded):
        inside = np.pad(np.ones(n), (1, length - n - 1))
        filtered = np.multiply.outer(filtered, np.convolve(inside, [1.0, 2.0, 1.0], "same"))
    diagonal = ((filtered - 2.0 ** ndim) / (4.0 ** ndim - 2.0 ** ndim)).ravel()
    inverse = np.divide(1.0, diagonal, out=np.zeros_like(diagonal), where=diagonal > 0)
    strides = np.cumprod((1,) + padded[:0:-1])[::-1].astype(np.int64)
    offsets = (np.indices((3,) * ndim).reshape(ndim, -1).T - 1) @ strides
    grid = _Grid(padded, diagonal, diagonal.astype(np.float32), inverse.astype(np.float32),
                 strides, offsets.astype(np.int64))
    for array in grid[1:]:
        array.flags.writeable = False
    return grid


class _Chain(NamedTuple):
    """Every level a grid coarsens to, until no axis shrinks, packed one after another
    (read-only arrays): per level its inner and padded shape, where it starts, its strides,
    stencil offsets and reach (the flat offset of its first inner position); the packed
    positions of the first level's inner positions (C order); per position of the coarse
    levels (level l + 1's between bounds[l] and bounds[l + 1]): its packed position, its
    finer position 2p - 1 per axis, and the finer position whose state it takes (clipped
    into the grid)."""
    inners: np.ndarray
    shapes: np.ndarray
    start: np.ndarray
    strides: np.ndarray
    offsets: np.ndarray
    reach: np.ndarray
    inside: np.ndarray
    coarse: np.ndarray
    fine: np.ndarray
    rule: np.ndarray
    bounds: np.ndarray


@lru_cache(maxsize=64)
def _chain(shape: tuple[int, ...]) -> _Chain:
    shapes = [shape]
    while _coarse_shape(shapes[-1]) != shapes[-1]:
        shapes.append(_coarse_shape(shapes[-1]))
    grids = [_grid(s) for s in shapes]
    start = np.cumsum([0] + [int(np.prod(g.padded)) for g in grids])
    coarse, fine, rule = [], [], []
    for lv in range(1, len(shapes)):
        q = np.indices(shapes[lv]).reshape(len(shape), -1)
        finer, extent = grids[lv - 1].padded, np.array(shapes[lv - 1])[:, None]
        coarse.append(start[lv] + np.ravel_multi_index(q + 1, grids[lv].padded))
        fine.append(start[lv - 1] + np.ravel_multi_index(2 * q + 1, finer))
        rule.append(start[lv - 1] + np.ravel_multi_index(np.minimum(2 * q, extent - 1) + 1,
                                                         finer))
    empty = np.zeros(0, np.int64)
    chain = _Chain(np.array(shapes, np.int64), np.array([g.padded for g in grids], np.int64),
                   start, np.stack([g.strides for g in grids]),
                   np.stack([g.offsets for g in grids]),
                   np.array([g.strides.sum() for g in grids]),
                   np.ravel_multi_index(np.indices(shape).reshape(len(shape), -1) + 1,
                                        grids[0].padded),
                   *(np.concatenate(x or [empty]) for x in (coarse, fine, rule)),
                   np.cumsum([0] + [len(x) for x in coarse]))
    for array in chain:
        array.flags.writeable = False
    return chain


@numba.njit(cache=True, nogil=True)
def _levels(unknown, removed, inside, coarse, fine, rule, bounds, coarsest, chosen, pairs):
    """How many levels the mask `removed` (flat, C order) takes: unknown (packed, 0 / 1) of
    each; chosen (2, ...) the coarse unknowns' packed positions and their finer positions,
    level l + 1's between pairs[l] and pairs[l + 1]. A level with at most `coarsest`
    unknowns is the coarsest, and so is one whose coarser level would have none."""
    unknown[:] = 0.0
    count = 0
    for i in range(inside.shape[0]):
        if removed[i]:
            unknown[inside[i]] = 1.0
            count += 1
    levels, n = 1, 0
    pairs[0] = 0
    for lv in range(bounds.shape[0] - 1):
        if count <= coarsest:
            break
        below = 0
        for j in range(bounds[lv], bounds[lv + 1]):
            if unknown[rule[j]] != 0:
                below += 1
        if below == 0:
            break
        for j in range(bounds[lv], bounds[lv + 1]):
            if unknown[rule[j]] != 0:
                unknown[coarse[j]] = 1.0
                chosen[0, n], chosen[1, n] = coarse[j], fine[j]
                n += 1
        levels += 1
        pairs[levels - 1] = n
        count = below
    return levels


@cache
def neighbour_stencil(ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (K, ndim) of the 3**ndim - 1 neighbours and their weights (K,), summing to 1.

    A neighbour's weight is the product over axes of the binomial kernel (1, 2, 1) at its
    offset, the centre left out: in 2D the 1/6 (edge) and 1/12 (corner) weights of ROAD's
    imputation (Rong et al. 2022); in 1D 1/2 each (linear interpolation); in 3D 1/14 (face),
    1/28 (edge), 1/56 (corner).
    """
    offsets = np.array([o for o in itertools.product((-1, 0, 1), repeat=ndim) if any(o)])
    weights = np.prod(np.where(offsets == 0, 2.0, 1.0), axis=1)
    return offsets, weights / weights.sum()


@cache
def _neighbour_weights(ndim: int) -> np.ndarray:
    """neighbour_stencil's weights over all 3**n stencil entries, the centre's 0."""
    weights = np.insert(neighbour_stencil(ndim)[1], 3 ** ndim // 2, 0.0)
    weights.flags.writeable = False
    return weights


class _Workspace(threading.local):
    """Work arrays reused by one thread's solves: fresh ones of a 3D level's size come from
    the allocator unmapped and page-fault on first touch, which was 40 % of a 3D solve."""
    singles = np.zeros(0, np.float32)
    doubles = np.zeros(0)

    def take(self, size: int, m: int, spare: int) -> tuple[np.ndarray, ...]:
        """(8, size) float32 rows, (5, m) float64 rows and `spare` more float32 (the coarse
        stencils and the Galerkin product's work arrays), of undefined content."""
        singles = 8 * size + spare
        if self.singles.size < singles:
            self.singles = np.zeros(singles, np.float32)
        if self.doubles.size < 5 * m:
            self.doubles = np.zeros(5 * m)
        rows = self.singles[:8 * size].reshape(8, size)
        return rows, self.doubles[:5 * m].reshape(5, m), self.singles[8 * size:singles]


_workspace = _Workspace()


class _Hierarchy(NamedTuple):
    """One mask's levels (views of the calling thread's work arrays): how they lie (start,
    strides, offsets, reach: per level), unknown (0 / 1), the first level's diagonal and
    every level's Jacobi divisor's inverse (float32, packed), the coarse levels' stencils
    (flat, level after level, (3**n, positions) each), and the coarse unknowns' packed
    positions and finer positions (level l + 1's between pairs[l] and pairs[l + 1])."""
    start: np.ndarray
    strides: np.ndarray
    offsets: np.ndarray
    reach: np.ndarray
    unknown: np.ndarray
    diagonal: np.ndarray
    inverse: np.ndarray
    stencils: np.ndarray
    coarse: np.ndarray
    fine: np.ndarray
    pairs: np.ndarray


def _hierarchy(removed: np.ndarray) -> tuple[_Hierarchy, np.ndarray, np.ndarray]:
    """The mask's levels, and the thread's float32 work rows (5, packed positions) and
    float64 ones (5, first level's positions)."""
    ndim = removed.ndim
    chain, first = _chain(removed.shape), _grid(removed.shape)
    size, m = 3 ** ndim, chain.start[1]
    rows, doubles, spare = _workspace.take(chain.start[-1], m,
                                           size * (chain.start[-1] - m + 2 * m))
    unknown, diagonal, inverse = rows[5], rows[6], rows[7]
    chosen, pairs = np.empty((2, len(chain.coarse)), np.int64), np.empty(len(chain.bounds),
                                                                         np.int64)
    levels = _levels(unknown, removed.ravel(), chain.inside, chain.coarse, chain.fine,
                     chain.rule, chain.bounds, COARSEST_UNKNOWNS, chosen, pairs)
    start = chain.start[:levels + 1]
    ping, pong = spare[size * (chain.start[-1] - m):].reshape(2, -1)
    np.multiply(unknown[:m], first.single_diagonal, out=diagonal[:m])
    np.multiply(unknown[:m], first.single_inverse, out=inverse[:m])
    hierarchy = _Hierarchy(start, chain.strides[:levels], chain.offsets[:levels],
                           chain.reach[:levels], unknown, diagonal, inverse,
                           spare[:size * (start[-1] - m)], chosen[0, :pairs[levels - 1]],
                           chosen[1, :pairs[levels - 1]], pairs[:levels])
    _galerkin(hierarchy.stencils, ping, pong, unknown, inverse, diagonal[:m],
              _neighbour_weights(ndim), start, chain.shapes[:levels], chain.inners[:levels],
              hierarchy.offsets, hierarchy.reach, SAFE_DIAGONAL)
    return hierarchy, rows[:5], doubles


def _crop(removed: np.ndarray) -> tuple[slice, ...]:
    """The box of the removed positions and their neighbours, its sides rounded up to a
    multiple of 1 / CROP_STEPS of the grid's (so that few shapes are cached): the system of
    the whole grid restricted to it is the same (every unknown's neighbours lie inside;
    where the box meets the grid's edge, so does the grid's)."""
    box = []
    for axis, n in enumerate(removed.shape):
        others = tuple(b for b in range(removed.ndim) if b != axis)
        present = np.flatnonzero(removed.any(axis=others))
        lo, hi, step = max(present[0] - 1, 0), min(present[-1] + 2, n), -(-n // CROP_STEPS)
        size = min(n, -(-(hi - lo) // step) * step)
        lo = min(lo, n - size)
        box.append(slice(lo, lo + size))
    return tuple(box)


def solve_imputation(item: np.ndarray, removed: np.ndarray) -> np.ndarray | None:
    """(C, *spatial) float64: `item` (C, *spatial), any float type, with its removed positions
    imputed (`neighbour_stencil`'s weights), or None if conjugate gradients did
    not converge. Some position must be kept, and some removed."""
    box = _crop(removed)
    if all(side.stop - side.start == n for side, n in zip(box, removed.shape)):
        return _solve(item, removed)
    solved = _solve(item[(slice(None),) + box], removed[box])
    if solved is None:
        return None
    out = item.astype(np.float64)
    out[(slice(None),) + box] = solved
    return out


def _solve(item: np.ndarray, removed: np.ndarray) -> np.ndarray | None:
    """solve_imputation on the whole grid."""
    ndim, channels = removed.ndim, item.shape[0]
    hierarchy, singles, doubles = _hierarchy(removed)
    first = _grid(removed.shape)
    filled = np.zeros((channels, hierarchy.start[1]))
    inner = (slice(None),) + tuple(slice(1, n + 1) for n in removed.shape)
    np.copyto(filled.reshape(channels, *first.padded)[inner], item, where=~removed)
    converged = _conjugate_gradients(
        filled, first.diagonal, singles, doubles, *hierarchy,
        weight=1.0 / (4.0 ** ndim - 2.0 ** ndim), centre=2.0 ** ndim,
        transfer=1.0 / 2.0 ** ndim, relative_residual=RELATIVE_RESIDUAL,
        max_iterations=MAX_ITERATIONS, smoothing=SMOOTHING_SWEEPS,
        coarse_smoothing=COARSE_SMOOTHING_SWEEPS, coarsest=COARSEST_SWEEPS)
    return filled.reshape(channels, *first.padded)[inner] if converged else None
