"""Rank 0's progress display: the mode chosen, status lines for logs, and a bad mode as a user error."""

import pytest

from distnet.errors import UserError
from distnet.metrics import Progress, progress_mode

from ..helpers import run_distnet


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


def test_the_bar_ends_at_max_steps_and_the_done_line_follows_it_on_a_line_of_its_own(spirals_data):
    r = run_distnet(["train", "spirals-mlp", "--data", spirals_data, "--progress", "bar", "--set",
                     "train.max_steps=20"], timeout=60)
    assert r.returncode == 0, r.stderr
    # the done line goes where the bar went (under mpiexec stdout is another pipe, which may overtake the bar's
    # closing newline), after it
    assert "distnet: done" not in r.stdout, r.stdout
    lines = r.stderr.split("\n")
    done = [i for i, text in enumerate(lines) if text.startswith("distnet: done in ")]
    assert len(done) == 1 and done[0] > 0, r.stderr
    last_frame = lines[done[0] - 1].split("\r")[-1]  # the bar's final state (tqdm redraws after a \r)
    assert last_frame.startswith("100%|") and "| 20/20 [" in last_frame, r.stderr  # not 20/3720 (60 epochs)
