"""ROAD's 2D / 3D imputation (multigrid-preconditioned conjugate gradients) against scipy's
direct sparse solve of the same system, assembled here position by position."""

from __future__ import annotations

import numpy as np
import pytest
from road_reference import reference_impute
from scipy import ndimage

from onnx_cam.metrics import linear_impute, multigrid


def masks(shape, rng) -> dict[str, np.ndarray]:
    smooth = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    centre = tuple(n // 2 for n in shape)
    all_but_centre = np.ones(shape, bool)
    all_but_centre[centre] = False
    all_but_corner = np.ones(shape, bool)
    all_but_corner[(-1,) * len(shape)] = False
    kept_islands = rng.random(shape) > 0.03            # a sea removed, a few kept islands
    removed_islands = ndimage.binary_erosion(rng.random(shape) < 0.35)  # small holes
    return {"scattered": rng.random(shape) < 0.5, "morf 90%": smooth > np.quantile(smooth, 0.1),
            "lerf 10%": smooth < np.quantile(smooth, 0.1), "all but centre": all_but_centre,
            "all but a corner": all_but_corner, "kept islands": kept_islands,
            "removed islands": removed_islands | (rng.random(shape) < 0.02)}


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


def test_conjugate_gradients_converge_well_below_the_iteration_cap(rng, monkeypatch):
    """The direct fallback is for safety only: ROAD's hardest mask (90 % removed) on an image
    and on a volume converges in well under the cap's iterations."""
    monkeypatch.setattr(multigrid, "MAX_ITERATIONS", 40)
    for shape in [(64, 64), (12, 16, 16)]:
        removed = masks(shape, rng)["morf 90%"]
        item = rng.normal(size=(3, *shape))
        assert multigrid.solve_imputation(item, removed) is not None


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
