"""ROAD's 2D / 3D imputation (multigrid-preconditioned conjugate gradients) against scipy's
direct sparse solve of the same system, assembled here position by position."""

from __future__ import annotations

import itertools
from functools import reduce

import numpy as np
import pytest
from road_reference import reference_impute
from scipy import ndimage, sparse

from onnx_cam.metrics import linear_impute, multigrid
from onnx_cam.metrics.perturb import linear_impute_all


def masks(shape, rng) -> dict[str, np.ndarray]:
    smooth = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    centre = tuple(n // 2 for n in shape)
    all_but_centre = np.ones(shape, bool)
    all_but_centre[centre] = False
    all_but_corner = np.ones(shape, bool)
    all_but_corner[(-1,) * len(shape)] = False
    kept_islands = rng.random(shape) > 0.03            # a sea removed, a few kept islands
    removed_islands = ndimage.binary_erosion(rng.random(shape) < 0.35)  # small holes
    near, far = np.zeros(shape, bool), np.zeros(shape, bool)   # solved in a box of the grid
    near[(slice(1, 4),) * len(shape)] = True
    far[(slice(-3, None),) * len(shape)] = True
    return {"lone unknowns on the far faces": far_faces(shape), "a blob near a corner": near,
            "a blob in the far corner": far,
            "scattered": rng.random(shape) < 0.5, "morf 90%": smooth > np.quantile(smooth, 0.1),
            "lerf 10%": smooth < np.quantile(smooth, 0.1), "all but centre": all_but_centre,
            "all but a corner": all_but_corner, "kept islands": kept_islands,
            "removed islands": removed_islands | (rng.random(shape) < 0.02)}


def far_faces(shape) -> np.ndarray:
    """Removed: the odd positions of each axis' last slice, each one alone among kept ones,
    where a coarse level's positions past an even axis' end come into play."""
    removed = np.zeros(shape, bool)
    for axis in range(len(shape)):
        face = [slice(1, None, 2)] * len(shape)
        face[axis] = -1
        removed[tuple(face)] = True
    return removed


@pytest.mark.parametrize("shape", [(33, 46), (9, 14, 17), (4, 30, 3)],
                         ids=["2d", "3d", "3d-thin"])
def test_imputation_matches_a_direct_sparse_solve(shape, rng):
    scales = np.array([1.0, 255.0, 0.0, 1e-3])[:, None]     # a zero channel, image units
    item = scales * rng.normal(size=(4, int(np.prod(shape)))) + np.array([[0], [100], [3], [0]])
    item = item.reshape(4, *shape)
    for name, removed in masks(shape, rng).items():
        expected = reference_impute(item, removed)
        got = linear_impute(item, removed)
        scale = np.abs(item).max(axis=tuple(range(1, item.ndim)), keepdims=True) + 1e-12
        assert (np.abs(got - expected) / scale).max() < 1e-6, name
        np.testing.assert_array_equal(got[:, ~removed], item[:, ~removed])


def test_conjugate_gradients_converge_in_a_few_iterations(rng, monkeypatch):
    """The direct fallback is for safety only: ROAD's hardest masks (90 % removed; all but a
    strip along one side, far from most of the unknowns) on an image and on a volume take at
    most 8 iterations (re-discretised coarse levels needed 13 to 16)."""
    monkeypatch.setattr(multigrid, "MAX_ITERATIONS", 8)
    for shape in [(64, 64), (12, 16, 16)]:
        strip = np.ones(shape, bool)
        strip[-3:] = False
        for removed in (masks(shape, rng)["morf 90%"], strip):
            item = rng.normal(size=(3, *shape))
            assert multigrid.solve_imputation(item, removed) is not None


def interpolation(shape) -> sparse.csr_matrix:
    """Multilinear interpolation from the positions 0, 2, 4, ... of each axis, one past an
    even axis' end included (n // 2 + 1 of them), to all of them."""
    def along(n):
        fine, coarse = np.arange(n)[:, None], np.arange(n // 2 + 1)[None, :]
        return sparse.csr_matrix(np.maximum(0.0, 1.0 - np.abs(fine - 2 * coarse) / 2.0))
    return reduce(lambda a, b: sparse.kron(a, b, format="csr"), map(along, shape))


def operator(shape) -> sparse.csr_matrix:
    """The imputation system's matrix over all positions: in-bounds neighbours weighted by
    the product over axes of (1, 2, 1), the centre left out, normalised; the diagonal their
    sum."""
    index = np.arange(int(np.prod(shape))).reshape(shape)
    offsets = [o for o in itertools.product((-1, 0, 1), repeat=len(shape)) if any(o)]
    total = sum(2.0 ** o.count(0) for o in offsets)
    rows, cols, vals = [], [], []
    for o in offsets:
        here = tuple(slice(max(0, -d), n - max(0, d)) for d, n in zip(o, shape))
        there = tuple(slice(max(0, d), n - max(0, -d)) for d, n in zip(o, shape))
        w = 2.0 ** o.count(0) / total
        rows += [index[here].ravel()] * 2
        cols += [index[there].ravel(), index[here].ravel()]
        vals += [np.full(index[here].size, -w), np.full(index[here].size, w)]
    return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows),
                                                     np.concatenate(cols))))


@pytest.mark.parametrize("shape", [(9, 8), (5, 4, 6)], ids=["2d", "3d"])
def test_the_coarse_level_holds_the_galerkin_product(shape, rng):
    """Level 1's stencils are P^T A P: A the system over the unknowns, P interpolation
    restricted to them, from the coarse positions whose own position (clipped into the
    grid) is unknown; assembled here with scipy."""
    removed = (rng.random(shape) < 0.6) | far_faces(shape)
    hierarchy = multigrid._hierarchy(removed)[0]
    unknown = np.flatnonzero(removed.ravel())
    coarse_shape = tuple(n // 2 + 1 for n in shape)
    clipped = np.ix_(*(np.minimum(2 * np.arange(n // 2 + 1), n - 1) for n in shape))
    coarse = np.flatnonzero(removed[clipped].ravel())
    p = interpolation(shape)[unknown][:, coarse]
    expected = (p.T @ operator(shape)[unknown][:, unknown] @ p).toarray()

    lo, hi = hierarchy.start[1], hierarchy.start[2]
    stencils = hierarchy.stencils[:(hi - lo) * 3 ** len(shape)].reshape(-1, hi - lo)
    packed = (np.array(np.unravel_index(coarse, coarse_shape)).T + 1) @ hierarchy.strides[1]
    got = np.zeros_like(expected)
    column = {position: j for j, position in enumerate(packed)}
    for i, position in enumerate(packed):
        for k, offset in enumerate(hierarchy.offsets[1]):
            if stencils[k, position] != 0:
                got[i, column[position + offset]] = stencils[k, position]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_a_row_of_imputations_is_the_same_as_one_at_a_time(rng):
    """linear_impute_all solves a row's masks on several threads: bit for bit the copies of
    linear_impute called mask by mask with the same generator, noise included."""
    for shape in [(40, 36), (6, 10, 12), (50,)]:
        item = rng.normal(size=(2, *shape)).astype(np.float32)
        cam = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
        stacked = np.stack([cam > np.quantile(cam, q) for q in np.linspace(0, 1, 12)])
        one_at_a_time = np.random.default_rng(5)
        expected = np.stack([linear_impute(item, m, 0.01, one_at_a_time) for m in stacked])
        got = linear_impute_all(item, stacked, 0.01, np.random.default_rng(5))
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("shape", [(32, 40), (1, 20, 21), (2, 17, 16)],
                         ids=["2d-even", "3d-one-slice", "3d-odd-and-even"])
def test_multigrid_itself_matches_a_direct_sparse_solve(shape, rng):
    """The 2D / 3D solver itself, not its direct fallback, on ROAD's masks (most and least
    relevant first, 10 % to 90 %, of a smooth map) on grids whose sizes coarsen unevenly."""
    cam = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    item = rng.normal(size=(3, *shape))
    for fraction in (0.1, 0.5, 0.9):
        for removed in (cam > np.quantile(cam, 1 - fraction), cam < np.quantile(cam, fraction)):
            got = multigrid.solve_imputation(item, removed)
            assert got is not None, fraction
            np.testing.assert_allclose(got, reference_impute(item, removed), rtol=0, atol=1e-6)


def test_a_solve_does_not_depend_on_the_solves_before_it(rng):
    """The solver reuses its work arrays between calls: results are bit for bit the same
    after many solves of other shapes and masks."""
    item, removed = rng.normal(size=(2, 20, 24)), masks((20, 24), rng)["morf 90%"]
    first = multigrid.solve_imputation(item, removed).copy()
    for shape in [(64, 64), (9, 14, 17), (20, 24)] * 10:
        for other in masks(shape, rng).values():
            multigrid.solve_imputation(rng.normal(size=(3, *shape)) * 1e3, other)
    np.testing.assert_array_equal(multigrid.solve_imputation(item, removed), first)


def test_a_forked_child_imputes_with_threads_of_its_own(rng):
    """After the parent has used its thread pool, a forked child's row of imputations runs
    (on its own pool) and gives the parent's numbers."""
    multiprocessing = pytest.importorskip("multiprocessing", reason="no multiprocessing")
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    item = rng.normal(size=(2, 24, 20)).astype(np.float32)
    stacked = rng.random((6, 24, 20)) < 0.5
    expected = linear_impute_all(item, stacked)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(linear_impute_all, (item, stacked)).get(timeout=60)
    np.testing.assert_array_equal(got, expected)
