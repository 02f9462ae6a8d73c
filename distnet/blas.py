"""BLAS threads per process: one knob for training and the benchmarks.

NumPy is imported before any command runs, so OPENBLAS_NUM_THREADS set from Python would be too late; the
count is set in-process through OpenBLAS's own ``*_set_num_threads`` (and threadpoolctl where installed,
which also covers MKL), and read back.
"""

import ctypes
import os

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
    counting the ranks on the same host by name (collective: every rank calls it). Returns the count."""
    import socket

    from .comm import hosts

    local_ranks = len(hosts(world)[socket.gethostname()])
    threads = user_threads() or threads_per_rank(local_ranks)
    set_blas_threads(threads)
    return threads
