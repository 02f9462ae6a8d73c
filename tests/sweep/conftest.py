"""Fixtures of the sweep tests: ``distnet``, a command run in the test's own process."""

import os
import signal
import subprocess
import threading

import pytest

from distnet.cli import main


class TimedOut(Exception):
    pass


@pytest.fixture
def distnet(capsys, monkeypatch):
    """distnet(*args, env=None, timeout=240) -> CompletedProcess: ``distnet ARGS`` run by ``distnet.cli.main`` in
    this process (a process start and its imports fewer per command: a sweep's report draws with the
    matplotlib this process imported once), stdout and stderr captured. A sweep's points still run as their own
    ``mpiexec`` launches, with one BLAS thread as ``tests.helpers.run_distnet`` gives them, and ``env`` added
    for the call. A command still running after ``timeout`` s is sent SIGTERM (a sweep ends its running point
    and returns 3; outside ``main``'s handlers it raises TimedOut), so that a hang fails the test as a launch's
    timeout would."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    monkeypatch.delenv("DISTNET_FAULT", raising=False)

    def run(*args, env=None, timeout=240):
        def timed_out(signum, frame):
            raise TimedOut(f"distnet {' '.join(map(str, args))} ran past {timeout} s")

        with monkeypatch.context() as m:
            for k, v in (env or {}).items():
                m.setenv(k, v)
            capsys.readouterr()
            previous = signal.signal(signal.SIGTERM, timed_out)
            timer = threading.Timer(timeout, os.kill, (os.getpid(), signal.SIGTERM))
            timer.start()
            try:
                code = main([str(a) for a in args])
            finally:
                timer.cancel()
                timer.join()
                signal.signal(signal.SIGTERM, previous)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return run
