"""The dense inverse that EASE and the hybrid's linear head are built on.

Both invert ``G + lam I`` with ``G = X^T X`` (plus side information), an m x m symmetric matrix
that the ridge makes positive definite. ``np.linalg.inv`` treats it as any square matrix: an LU
factorisation and a solve against the identity, about 8/3 m^3 flops and two extra m x m buffers.
Through the Cholesky factor (LAPACK ``potrf`` then ``potri``) the same inverse costs about m^3
flops and works in one buffer; measured 2.0-3.2x faster at m = 2,000-4,000 in float32 on two
cores, where the blend search pays one inverse per trial and the scale curve of a 20,000-item
head was dominated by them (issue 16).
"""

from __future__ import annotations

import numpy as np

MIRROR_BLOCK = 2048  # rows per step when copying one triangle onto the other: bounded temporaries


def spd_inverse(a: np.ndarray) -> np.ndarray:
    """``a^-1`` for a symmetric ``a``, in ``a``'s dtype; ``a`` is left as it was.

    Falls back to the LU inverse when ``a`` is not positive definite: a nearest-neighbour
    side-information term is symmetric but need not be positive semi-definite, so a heavy side
    weight with a light ridge can make the system indefinite, and it must still be solved the
    way it always was."""
    from scipy.linalg import lapack

    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (a,))
    # a is symmetric, so its transpose (a Fortran-ordered view, no copy) is the same matrix in the
    # order LAPACK wants; potrf copies it once (a stays intact) and potri overwrites that copy.
    factor, info = potrf(a.T, lower=False, clean=False, overwrite_a=False)
    if info != 0:
        return np.linalg.inv(a)
    inverse, info = potri(factor, lower=False, overwrite_c=True)
    if info != 0:
        return np.linalg.inv(a)
    # potri fills the upper triangle of a Fortran-ordered array: its C-ordered transpose holds
    # the inverse in the lower triangle, which is mirrored onto the upper one in place.
    out = inverse.T
    mirror_lower(out)
    return out


def mirror_lower(p: np.ndarray, block: int = MIRROR_BLOCK) -> None:
    """Copy the strict lower triangle of the square ``p`` onto its upper triangle, in place,
    ``block`` rows at a time (a whole-matrix ``triu``/``tril`` would take two more m x m copies:
    3.2 GB at m = 20,000)."""
    m = len(p)
    for start in range(0, m, block):
        stop = min(start + block, m)
        p[start:stop, stop:] = p[stop:, start:stop].T
        diagonal = p[start:stop, start:stop]
        upper = np.triu_indices(stop - start, 1)
        diagonal[upper] = diagonal.T[upper]
