"""launch/commbench.py (time to accuracy on a shaped link; it needs root, namespaces and minutes, so it is not
run here): its argument errors exit 2 before anything starts, and how it reads time to accuracy."""

import importlib.util
import subprocess
import sys

import pytest

from ..helpers import ROOT

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


def load():
    spec = importlib.util.spec_from_file_location("commbench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_time_to_accuracy_is_the_first_evaluation_at_the_target():
    mod = load()
    evals = [(2.0, 0.85), (4.1, 0.881), (6.0, 0.879), (8.0, 0.89)]
    assert mod.time_to(evals, 0.88) == 4.1 and mod.time_to(evals, 0.9) is None and mod.time_to([], 0.5) is None


def test_a_failed_run_is_a_row_and_the_others_are_kept():
    commbench = load()
    ok = dict(samples_per_s=1000.0, evals=[(1.0, 0.5), (2.0, 0.9)], steps=10, link_bytes=2e6)
    good = commbench.measure(lambda: ok, 0.88, rate="1gbit", who="distnet", sync="bucketed")
    assert good["time_to_target_s"] == 2.0 and good["final_accuracy"] == 0.9 and good["mb_per_step"] == 0.2
    assert "MB/step" in commbench.report_line(good, 0.88)

    def crash():
        raise RuntimeError("DDP hook powersgd failed: gloo\nReceived data size doesn't match")

    bad = commbench.measure(crash, 0.88, rate="1gbit", who="DDP", sync="powersgd")
    assert bad["error"].startswith("DDP hook powersgd failed") and "samples_per_s" not in bad
    assert commbench.report_line(bad, 0.88).startswith("failed: DDP hook powersgd failed: gloo | Received")
