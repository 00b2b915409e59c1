"""The Cholesky inverse behind EASE and the linear head: same answer as LU, in place of it."""

from __future__ import annotations

import numpy as np
import pytest

from sparkrec.linalg import mirror_lower, spd_inverse


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_spd_inverse_matches_the_lu_inverse_and_leaves_its_input(dtype, tol):
    rng = np.random.default_rng(0)
    x = (rng.random((300, 120)) < 0.1).astype(dtype)
    g = x.T @ x + 2 * np.eye(120, dtype=dtype)
    before = g.copy()
    p = spd_inverse(g)
    want = np.linalg.inv(g)
    assert p.dtype == dtype and p.flags.c_contiguous
    assert np.abs(p - want).max() <= tol * np.abs(want).max()
    assert np.array_equal(p, p.T)  # both triangles filled
    assert np.array_equal(g, before)


def test_an_indefinite_system_is_still_inverted():
    # a nearest-neighbour side-information term is symmetric but not positive definite
    a = np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.5], [0.0, 0.5, 3.0]])
    assert np.linalg.eigvalsh(a).min() < 0
    assert np.allclose(spd_inverse(a) @ a, np.eye(3))


def test_mirror_lower_over_several_blocks():
    rng = np.random.default_rng(1)
    sym = rng.random((11, 11))
    sym = sym + sym.T
    p = np.tril(sym) + np.triu(rng.random((11, 11)), 1)  # garbage above the diagonal
    mirror_lower(p, block=4)
    assert np.array_equal(p, sym)
