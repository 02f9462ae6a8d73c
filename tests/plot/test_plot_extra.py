"""Without matplotlib (the ``plot`` extra) every figure command says what to install, in one line, exit 2."""

import subprocess
import sys

import pytest

BLOCKED = "import sys; sys.modules['matplotlib'] = None; from distnet.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.mark.parametrize("args", [["plot", "--boundary", "missing.h5", "--out", "b.png"],
                                  ["plot", "run.jsonl", "--out", "c.png"]])
def test_a_figure_without_matplotlib_names_the_extra(tmp_path, args):
    (tmp_path / "run.jsonl").write_text(
        '{"event": "train", "step": 10, "time": 1.0, "epoch": 1, "loss": 0.5, "accuracy": 0.8, "lr": 0.1, '
        '"samples_per_s": 100.0, "global_batch": 32}\n'
        '{"event": "eval", "step": 10, "time": 2.0, "epoch": 1, "split": "test", "loss": 0.6, "accuracy": 0.75}\n')
    r = subprocess.run([sys.executable, "-c", BLOCKED, *args], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == ["distnet: error: figures need matplotlib: pip install -e '.[plot]' "
                                             "(the 'plot' extra)"], r.stderr
