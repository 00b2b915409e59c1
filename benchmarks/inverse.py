"""The dense inverse behind EASE and the hybrid's linear head (issue 16): ``np.linalg.inv`` (LU)
against ``sparkrec.linalg.spd_inverse`` (Cholesky), timed in the same run on the same matrices.

The matrices are shaped like a head's system: the Gram of a sparse 0/1 user x item matrix
(3 users per item, 3% density) plus the ridge the search's middle ``lam`` gives (0.3 x the mean
diagonal), float32 as the head solves it and float64 as the EASE baseline does. Each size is
timed twice, alternating, and the faster time of each kept.

    python benchmarks/inverse.py                   # m = 2,000, 5,000, 10,000
    python benchmarks/inverse.py --sizes 20000     # the head's default cap (~1.6 GB per matrix)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from sparkrec.linalg import spd_inverse


def system(m: int, dtype: type, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.random((3 * m, m), dtype=np.float32) < 0.03).astype(dtype)
    g = x.T @ x
    g[np.diag_indices(m)] += 0.3 * np.mean(np.diag(g))
    return g


def best_of(fn, a: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:  # type: ignore[no-untyped-def]
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(a)
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000, 10000])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    print(f"{'dtype':>8} {'m':>7} {'LU s':>8} {'Cholesky s':>11} {'speed-up':>9} {'max rel diff':>13}")
    for dtype in (np.float32, np.float64):
        for m in args.sizes:
            a = system(m, dtype)
            lu, want = best_of(np.linalg.inv, a, args.repeats)
            chol, got = best_of(spd_inverse, a, args.repeats)
            diff = float(np.abs(got - want).max() / np.abs(want).max())
            print(f"{np.dtype(dtype).name:>8} {m:>7,} {lu:>8.2f} {chol:>11.2f} {lu / chol:>8.2f}x {diff:>13.1e}",
                  flush=True)
            del a, want, got


if __name__ == "__main__":
    main()
