"""launch/commbench.py (time to accuracy on a shaped link; it needs root, namespaces and minutes, so it is not
run here): its argument errors exit 2 before anything starts, and how it reads time to accuracy."""

import importlib.util
import subprocess
import sys

import pytest

from .conftest import ROOT

SCRIPT = ROOT / "launch" / "commbench.py"


@pytest.mark.parametrize("args, words", [
    (["--rates", "1gbps"], "--rates"),
    (["--strategies", "zero,int8"], "--strategies"),
    (["--ddp", "bf16"], "--ddp"),
    (["--target", "88"], "--target"),
    (["--prefix", "dn"], "--prefix"),
])
def test_bad_arguments_exit_2_before_any_cluster(args, words):
    r = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and r.stdout == ""


def test_time_to_accuracy_is_the_first_evaluation_at_the_target():
    spec = importlib.util.spec_from_file_location("commbench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    evals = [(2.0, 0.85), (4.1, 0.881), (6.0, 0.879), (8.0, 0.89)]
    assert mod.time_to(evals, 0.88) == 4.1 and mod.time_to(evals, 0.9) is None and mod.time_to([], 0.5) is None
