"""BLAS threads per process: one knob for training and the benchmarks; and one BLAS call NumPy lacks.

NumPy is imported before any command runs, so OPENBLAS_NUM_THREADS set from Python would be too late; the
count is set in-process through OpenBLAS's own ``*_set_num_threads`` (and threadpoolctl where installed,
which also covers MKL), and read back.

``subtract_product(C, A, B)`` is C <- C - A B^T in one gemm with beta = 1, through the BLAS that NumPy
loaded (found by its CBLAS symbols), where NumPy's ``C -= A @ B.T`` writes the product to a temporary
and reads it back: for PowerSGD's residual, a rank-r update of a large matrix, that is 2.5x the time.
"""

import ctypes
import os

import numpy as np

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _openblas_libraries():
    """Paths of the OpenBLAS libraries mapped into this process."""
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    return sorted(paths)


def set_blas_threads(n):
    """Limit BLAS to ``n`` threads in this process; return the count BLAS reports (None if unknown)."""
    for var in THREAD_VARS:
        os.environ[var] = str(n)  # for any child process
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(n)
    except ImportError:
        pass
    reported = None
    for path in _openblas_libraries():
        lib = ctypes.CDLL(path)
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", "_64_", ""):
                setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    setter(ctypes.c_int(n))
                    reported = int(getter())
                    break
            else:
                continue
            break
    return reported


def user_threads():
    """The thread count the user set in the environment, or None."""
    for var in THREAD_VARS:
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def threads_per_rank(local_ranks):
    """Cores for each of ``local_ranks`` processes on this machine.

    A launcher that binds ranks to cores (srun, mpirun --bind-to) leaves each process fewer CPUs in its
    affinity mask than the machine has; then the mask is this rank's share. Otherwise the machine's cores
    are split evenly, so N ranks x T threads never oversubscribe the cores (the usual 10x slowdown).
    """
    cores = os.cpu_count() or 1
    mine = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    if mine < cores:
        return max(1, mine)
    return max(1, cores // max(1, local_ranks))


def configure(world):
    """Set this rank's BLAS threads: the user's *_NUM_THREADS when set, else its share of its host's cores,
    counting the ranks on the same host by name (``world.local_size``, known since the world started; no
    collective). Returns the count."""
    threads = user_threads() or threads_per_rank(world.local_size)
    set_blas_threads(threads)
    return threads


# CBLAS gemm symbols, most specific first: (name pattern, integer type). NumPy's own wheels carry an ILP64
# OpenBLAS whose symbols end in 64_; a NumPy built against a system BLAS finds the plain LP64 names.
_GEMM_SYMBOLS = (("scipy_cblas_{}gemm64_", ctypes.c_int64), ("cblas_{}gemm64_", ctypes.c_int64),
                 ("cblas_{}gemm", ctypes.c_int))
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_gemm = {}  # dtype -> the checked gemm function, or None (NumPy then)


def _blas_libraries():
    """Paths of the libraries mapped into this process that may hold a CBLAS (OpenBLAS, MKL, BLIS, ...)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/" in line and any(
                k in line.rsplit("/", 1)[-1].lower() for k in ("blas", "mkl", "blis"))}
    except OSError:
        return []
    return sorted(paths)


def _find_gemm(dtype):
    letter = {np.dtype(np.float32): "s", np.dtype(np.float64): "d"}.get(np.dtype(dtype))
    if letter is None:
        return None
    real = ctypes.c_float if letter == "s" else ctypes.c_double
    for path in _blas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for pattern, integer in _GEMM_SYMBOLS:
            fn = getattr(lib, pattern.format(letter), None)
            if fn is None:
                continue
            fn.restype = None
            fn.argtypes = [ctypes.c_int] * 3 + [integer] * 3 + [real, ctypes.c_void_p, integer, ctypes.c_void_p,
                                                                 integer, real, ctypes.c_void_p, integer]
            if _agrees(fn, dtype):
                return fn
    return None


def _agrees(fn, dtype):
    """Whether ``fn`` computes C - A B^T on a small case as NumPy does (a wrong symbol is never used)."""
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(s).astype(dtype) for s in ((5, 3), (4, 3), (5, 4)))
    want = c - a @ b.T
    _call(fn, c, a, b)
    return np.allclose(c, want, rtol=1e-4, atol=1e-5)


def _call(fn, c, a, b):
    (n, m), k = c.shape, a.shape[1]
    fn(_ROW_MAJOR, _NO_TRANS, _TRANS, n, m, k, -1.0, a.ctypes.data, k, b.ctypes.data, k, 1.0, c.ctypes.data, m)


def subtract_product(c, a, b, use_blas=True):
    """C <- C - A B^T in place, for C (n x m), A (n x k), B (m x k), C-contiguous and of one float dtype:
    one BLAS gemm when NumPy's BLAS exposes CBLAS (and ``use_blas``), else NumPy's product and subtraction."""
    if c.shape != (a.shape[0], b.shape[0]) or a.shape[1] != b.shape[1] or not (c.dtype == a.dtype == b.dtype):
        raise ValueError(f"subtract_product: shapes {c.shape} {a.shape} {b.shape}, dtypes {c.dtype} {a.dtype} "
                         f"{b.dtype}: need C (n, m), A (n, k), B (m, k) of one dtype")
    fn = None
    if use_blas and all(x.flags.c_contiguous for x in (a, b, c)):
        if c.dtype not in _gemm:
            _gemm[c.dtype] = _find_gemm(c.dtype)
        fn = _gemm[c.dtype]
    if fn is None:
        c -= a @ b.T
    else:
        _call(fn, c, a, b)
    return c
