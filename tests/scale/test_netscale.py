"""launch/netscale.py (the network scaling benchmark; it needs root, namespaces and minutes, so it is not run
here): its argument errors exit 2 before anything starts, and the arithmetic its table rests on."""

import importlib.util
import subprocess
import sys

import pytest

from ..helpers import ROOT

SCRIPT = ROOT / "launch" / "netscale.py"


def load_script():
    spec = importlib.util.spec_from_file_location("netscale", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # imports compare_torch (no torch at the top) and nothing that starts a run
    return mod


@pytest.mark.parametrize("args, words", [
    (["--rates", "1gbps"], "--rates"),
    (["--rates", "none,fast"], "--rates"),
    (["--batches", "127"], "even"),
    (["--batches", "x"], "integers"),
    (["--models", "rnn"], "--models"),
    (["--repeats", "0"], "--repeats"),
    (["--prefix", "dn"], "--prefix"),  # the default cluster's prefix: another user's namespaces
])
def test_bad_arguments_exit_2_before_any_cluster(args, words):
    r = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and r.stdout == ""


def test_rates_and_one_allreduce_on_the_link():
    mod = load_script()
    assert mod.rate_bps("1gbit") == 1e9 and mod.rate_bps("10gbit") == 1e10 and mod.rate_bps("500mbit") == 5e8
    assert mod.rate_bps("none") is None
    # fashion-mlp: 235,146 float32 parameters = 940,584 bytes; 2 ranks: each sends them once, 7.52 ms at 1 Gbit/s
    assert mod.grad_bytes(235_146) == 940_584
    assert mod.allreduce_ms(235_146, 1e9) == pytest.approx(940_584 * 8 / 1e9 * 1e3)
    assert mod.allreduce_ms(235_146, 1e10) == pytest.approx(0.752467, rel=1e-5)
    # a ring of 4 ranks sends 2 * 3/4 of the buffer per rank
    assert mod.allreduce_ms(250, 8e6, ranks=4) == pytest.approx(1.5)  # 1000 bytes at 1 MB/s
    assert mod.efficiency(180.0, 100.0) == pytest.approx(0.9)


def test_default_steps_keep_the_cnn_short_at_large_batches():
    mod = load_script()
    assert mod.plan("cnn", 1024) == (3, 5) and mod.plan("cnn", 128) == (5, 40)
    assert mod.plan("mlp", 128) == (30, 100) and mod.plan("mlp", 1024) == (5, 20)
