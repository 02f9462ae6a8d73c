"""Rank 0's progress display: the mode chosen, status lines for logs, and a bad mode as a user error."""

import pytest

from distnet.errors import UserError
from distnet.train.metrics import Progress, progress_mode

from .conftest import run_distnet


def test_lines_mode_prints_status_lines_and_results(capsys, monkeypatch):
    monkeypatch.delenv("DISTNET_PROGRESS", raising=False)
    assert progress_mode("auto") == "lines"  # pytest captures stderr: not a terminal
    monkeypatch.setenv("DISTNET_PROGRESS", "none")
    assert progress_mode("auto") == "none" and progress_mode("lines") == "lines"
    p = Progress(200, mode="lines", every_s=0.0)
    p.update(50, loss=0.5, sps=1000)
    p.line("epoch 1 done")
    p.close()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("  step 50/200 (25%) loss 0.5 sps 1000 ETA ") and out[0].endswith(" s")
    assert out[1:] == ["epoch 1 done"]
    quiet = Progress(200, mode="none", every_s=0.0)
    quiet.update(10, loss=1.0)
    quiet.line("not shown")
    assert capsys.readouterr().out == ""


def test_a_bad_mode_is_a_user_error(monkeypatch, spirals_data):
    with pytest.raises(UserError, match="progress mode 'fancy'"):
        progress_mode("fancy")
    r = run_distnet(["train", "spirals-mlp", "--data", spirals_data], n=2, env={"DISTNET_PROGRESS": "fancy"},
                    timeout=60)
    assert r.returncode == 2 and r.stderr.count("distnet: error: progress mode 'fancy'") == 1, r.stderr
