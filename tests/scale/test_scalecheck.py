"""launch/scalecheck.py (the step-time model's validation on namespace hosts; it needs root and minutes, so it
is not run here): its argument errors exit 2 before any cluster, and its table marks the rows past the goal."""

import importlib.util
import subprocess
import sys

from ..helpers import ROOT

SCRIPT = ROOT / "launch" / "scalecheck.py"


def load_script():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("scalecheck", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # imports netscale and compare_torch (no torch at the top), starts nothing
    return mod


def test_bad_arguments_exit_2_before_any_cluster(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--only", "rnn"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--only" in r.stderr
    r = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path / "none")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert "no prepared data" in r.stderr or "must run as root" in r.stderr


def test_the_table_marks_rows_past_the_goal():
    mod = load_script()
    rows = [dict(model="mlp", batch=128, hosts=2, rate="1gbit", predicted=110.0, measured=100.0, error=0.10),
            dict(model="mlp", batch=1024, hosts=4, rate="1gbit", predicted=130.0, measured=100.0, error=0.30)]
    ttt = [dict(batch=256, steps_sweep=570.0, steps_run=520, predicted_s=4.95, measured_s=7.75, eval_s=3.42,
                error=0.14)]
    lines = mod.table(rows, ttt).splitlines()
    assert lines[2].endswith("| +10 % |") and lines[3].endswith("| +30 % ✗ |")
    assert "| 256 | 570, 520 | 4.95 | 4.33 (+ 3.42) | +14 % |" in lines
    assert {r for *_, r in mod.ROWS} == {"1gbit", "100mbit"} and len(mod.ROWS) == 13
