"""How a rank waits on a collective: polls, with comm.wait's pause between them, and after half a second a
sleep, so that a long wait (a checkpoint being written, a slow rank) keeps no core busy."""

import textwrap

import pytest

from ..helpers import run_python_mpi

LONG_WAIT = textwrap.dedent("""
    import resource, time
    import numpy as np
    from distnet import comm
    w = comm.world()
    w.wait_mode("yield")
    w.barrier()
    if w.rank == 0:
        time.sleep(3.0)  # rank 1 waits for it in the allreduce
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    t, c = time.monotonic(), cpu.ru_utime + cpu.ru_stime
    w.allreduce(np.ones(4))
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    waited, busy = time.monotonic() - t, cpu.ru_utime + cpu.ru_stime - c
    print(w.rank, round(waited, 2), round(busy, 2), flush=True)
""")


@pytest.mark.mpi
def test_a_long_wait_sleeps_between_polls_after_half_a_second():
    r = run_python_mpi(LONG_WAIT, n=2, timeout=60)
    assert r.returncode == 0, r.stderr
    waited, busy = map(float, next(line for line in r.stdout.splitlines() if line.startswith("1 ")).split()[1:])
    assert waited > 2.5, r.stdout
    # yielding polls for quiet_s (0.5 s: at most that much CPU), then 1 ms sleeps: a few percent of the rest
    # (polling without them, a core of its own kept busy for the 3 s)
    assert busy < 0.5 + 0.4, r.stdout
