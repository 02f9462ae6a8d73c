"""The machine's measured matrix-multiply rate: the yardstick for the layers' achieved GFLOP/s.

``matmul_seconds`` times one ``np.matmul`` of a given shape (best of several samples, each long enough
for the timer to resolve); ``sgemm_peak`` is the float32 square-GEMM rate at whatever BLAS thread count
the process has (``distnet.blas.set_blas_threads`` sets it). A measured peak, not a datasheet one:
on a shared machine it is only as good as the quietest of its samples, which is why the best is kept.
"""

import time

import numpy as np


def matmul_seconds(m, k, n, dtype=np.float32, repeats=5, trans_a=False, trans_b=False, min_sample_s=0.02):
    """Best seconds of one (m, k) @ (k, n) product; ``trans_*`` feed a transposed view (as layers do)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    a = a.T if trans_a else a
    b = b.T if trans_b else b
    out = np.empty((m, n), dtype)
    np.matmul(a, b, out=out)  # warm-up: page in, let BLAS pick its kernel
    t = time.perf_counter()
    np.matmul(a, b, out=out)
    one = max(time.perf_counter() - t, 1e-7)
    calls = max(1, int(min_sample_s / one))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            np.matmul(a, b, out=out)
        best = min(best, (time.perf_counter() - t) / calls)
    return best


def gemm_gflops(m, k, n, dtype=np.float32, repeats=5, **kw):
    """GFLOP/s (2mkn flops) of the best (m, k) @ (k, n) product."""
    return 2 * m * k * n / matmul_seconds(m, k, n, dtype, repeats, **kw) / 1e9


def sgemm_peak(size=1024, repeats=7, dtype=np.float32):
    """The measured square GEMM rate in GFLOP/s: ``size`` x ``size`` ``dtype`` matmul, best of ``repeats``."""
    return gemm_gflops(size, size, size, dtype, repeats)
