"""Fixtures of the comm tests: several scripts ("cases") run one after the other in one mpiexec launch, each
reported on its own (a launch, not the script, is most of a short case's cost)."""

import json
import textwrap

import pytest

from ..helpers import run_python_mpi

RUNNER = textwrap.dedent("""
    import contextlib, io, json, os, traceback
    from distnet import comm
    w = comm.world()
    results = {}
    for key, source in json.loads(os.environ["DISTNET_TEST_CASES"]).items():
        out, error = io.StringIO(), ""
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(source, f"<case {key}>", "exec"), {"__name__": "__main__"})
        except BaseException:  # an assertion, SystemExit: this case's failure, on this rank
            error = traceback.format_exc()
        everyone = w.allgather((out.getvalue(), error))  # every rank has ended the case before the next starts
        results[key] = {"stdout": everyone[0][0], "errors": [e for _, e in everyone if e]}
    if w.rank == 0:
        print("CASES", json.dumps(results), flush=True)
""")


@pytest.fixture(scope="session")
def launch_cases():
    """launch(cases, n, env=None, timeout=120): run {key: Python source} on n ranks in one launch, in order
    (each in a namespace of its own); {key: Case} with ``stdout`` (what rank 0 printed) and ``errors`` (the
    traceback of each rank the case failed on). A case that fails on some ranks only and leaves the others
    waiting in a collective ends the launch at its timeout: every case of it fails."""
    def launch(cases, n, env=None, timeout=120):
        r = run_python_mpi(RUNNER, n=n, timeout=timeout, env={**(env or {}), "DISTNET_TEST_CASES": json.dumps(cases)})
        lines = [t for t in r.stdout.splitlines() if t.startswith("CASES ")]
        assert r.returncode == 0 and lines, r.stdout + r.stderr
        return {key: Case(**case) for key, case in json.loads(lines[-1][len("CASES "):]).items()}

    return launch


class Case:
    def __init__(self, stdout, errors):
        self.stdout, self.errors = stdout, errors

    def check(self, ok):
        """Assert that the case passed on every rank and rank 0's output starts with ``ok``."""
        assert not self.errors, "\n".join(self.errors)
        assert self.stdout.startswith(ok), self.stdout
