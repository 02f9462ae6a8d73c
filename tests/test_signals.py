"""One rule for every command stopped by a signal (distnet/signals.py): SIGINT, SIGTERM or SIGUSR1 end ``eval``,
``data prepare`` and a sweep point cleanly, with one line and exit 3, and leave nothing half-written. Real
processes: the signal comes from outside, or from the process itself at a chosen point of its work."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from distnet.signals import EXIT_STOPPED

from .helpers import mpiexec_path, run_distnet, train


def env(**extra):
    return dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)


# eval, with the signal sent by a rank to itself while it evaluates (its second batch): deterministic
SELF_SIGNAL = textwrap.dedent("""
    import os, signal, sys
    from distnet.evaluate import assess
    from distnet.cli import main

    add, calls, who = assess.Tally.add, [0], os.environ["WHO"]

    def add_then_signal(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 2 and who in ("all", os.environ.get("PMI_RANK", "0")):
            os.kill(os.getpid(), getattr(signal, os.environ["SIG"]))
        return add(self, *args, **kwargs)

    assess.Tally.add = add_then_signal
    if "LATER_S" in os.environ:  # how long a rank other than 0 waits for rank 0 to say it was stopped
        from distnet.comm import failures
        failures.LATER_S = float(os.environ["LATER_S"])
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def checkpoint(spirals_data, tmp_path_factory):
    r, out = train(tmp_path_factory.mktemp("ck"), "run", spirals_data, extra=["--set", "train.max_steps=2"])
    assert r.returncode == 0, r.stderr
    return out / "ck"


def eval_stopped(tmp_path, checkpoint, data, who, sig="SIGTERM", n=None, **extra):
    script = tmp_path / "self_signal.py"
    script.write_text(SELF_SIGNAL)
    figures = tmp_path / "figures"
    cmd = [sys.executable, str(script), "eval", str(checkpoint), "--data", str(data), "--batch-size", "100",
           "--figures", str(figures), "--json"]
    if n:
        cmd = [mpiexec_path(), "-n", str(n), *cmd]
    t = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env(WHO=who, SIG=sig, **extra))
    return r, time.monotonic() - t, figures


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1"])
def test_eval_stopped_by_a_signal_says_so_and_writes_nothing(tmp_path, checkpoint, spirals_data, sig):
    r, _, figures = eval_stopped(tmp_path, checkpoint, spirals_data, "all", sig)
    assert r.returncode == EXIT_STOPPED, r.stderr
    assert r.stderr.strip().splitlines() == [f"distnet: stopped by {sig}"], r.stderr
    assert r.stdout == "" and not (figures.exists() and any(figures.iterdir()))


@pytest.mark.mpi
def test_eval_on_two_ranks_stops_on_every_rank_with_one_line(tmp_path, checkpoint, spirals_data):
    r, _, figures = eval_stopped(tmp_path, checkpoint, spirals_data, "all", n=2)
    assert r.returncode == EXIT_STOPPED, r.stderr
    said = [line for line in r.stderr.splitlines() if line.startswith("distnet:")]
    assert said == ["distnet: stopped by SIGTERM"], r.stderr
    assert r.stdout == "" and not (figures.exists() and any(figures.iterdir()))


@pytest.mark.mpi
def test_a_signal_on_one_rank_alone_ends_the_others_waiting_in_a_collective(tmp_path, checkpoint, spirals_data):
    # rank 0 has no signal to report: rank 1's wait for it (failures.LATER_S, 2 s) only delays the end, while
    # rank 0 waits in a collective (spinning on sched_yield); shortened here, it still ends rank 0 the same way
    r, took, _ = eval_stopped(tmp_path, checkpoint, spirals_data, "1", n=2, LATER_S="0.2")
    assert r.returncode == EXIT_STOPPED, r.stderr
    said = [line for line in r.stderr.splitlines() if line.startswith("distnet:")]
    assert said == ["distnet: stopped by SIGTERM on rank 1"], r.stderr
    assert took < 20, took


def test_data_prepare_stopped_while_writing_leaves_the_old_dataset_and_no_temporary_files(tmp_path):
    out = tmp_path / "sp"
    r = run_distnet(["data", "prepare", "spirals", "--out", out, "--num-train", "100", "--num-test", "10"])
    assert r.returncode == 0, r.stderr
    before = sorted((p.relative_to(out), p.stat().st_size) for p in out.rglob("*"))
    # large enough to take a second to write: the signal comes when its temporary folder appears
    proc = subprocess.Popen([sys.executable, "-m", "distnet", "data", "prepare", "spirals", "--out", str(out),
                             "--force", "--num-train", "2000000", "--num-test", "100", "--compress", "--shards",
                             "10"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        end = time.monotonic() + 60
        while not list(tmp_path.glob(".sp.tmp-*")):
            assert proc.poll() is None and time.monotonic() < end, proc.communicate()
            time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_STOPPED, err
    assert err.strip().splitlines() == ["distnet: stopped by SIGTERM"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sp"]  # no .sp.tmp-*, no .sp.old-*
    after = sorted((p.relative_to(out), p.stat().st_size) for p in out.rglob("*"))
    if after != before:  # the signal came while the new folder was put in place (seen in CI): then all of it
        from distnet.data import open_dataset

        ds = open_dataset(out)
        assert (len(ds["train"]), len(ds["test"])) == (2000000, 100), after


def test_a_sweep_point_run_by_itself_stops_on_sigusr1_and_can_resume(tmp_path, spirals_data):
    """``sweep --run-point`` (a Slurm array task; Slurm's --signal sends SIGUSR1): the point's job stops with
    its checkpoint, exit 3, nothing of it keeps running."""
    out = tmp_path / "s"
    r = run_distnet(["sweep", "spirals-mlp", "--data", spirals_data, "--out", out, "--batch-sizes", "256",
                     "--epochs", "20000", "--target", "accuracy=0.999", "--slurm-array"], timeout=60)
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen([sys.executable, "-m", "distnet", "sweep", "--run-point", str(out), "0"],
                            stderr=subprocess.PIPE, text=True, env=env())
    metrics = out / "b00256-lr1-s0" / "metrics.jsonl"
    try:
        end = time.monotonic() + 60
        while not (metrics.is_file() and '"event": "train"' in metrics.read_text()):
            assert proc.poll() is None and time.monotonic() < end, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGUSR1)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_STOPPED, err
    assert "distnet sweep: interrupted (SIGUSR1); run the same command again to continue (point b00256-lr1-s0 " \
           "resumes from its checkpoint)" in err, err
    assert [json.loads(line)["event"] for line in open(metrics)][-1] == "stop"
    assert list((out / "b00256-lr1-s0" / "ckpt").glob("ckpt-*.h5"))

    def in_sweep(pid):
        try:
            return os.readlink(f"/proc/{pid}/cwd") == str(out)
        except OSError:
            return False

    end = time.monotonic() + 30
    while [p for p in os.listdir("/proc") if p.isdigit() and in_sweep(p)]:
        assert time.monotonic() < end, "processes of the stopped point are still running"
        time.sleep(0.1)


@pytest.mark.parametrize("where", ["prepare", "import"])
def test_a_signal_right_after_the_temporary_folder_is_made_leaves_no_folder(tmp_path, monkeypatch, where):
    # the signal lands inside mkdtemp, just after the folder exists: before the writer holds its name
    import tempfile

    import numpy as np

    from distnet.data import writer
    from distnet.data.imports import write_arrays
    from distnet.signals import Interrupted, stoppable

    made = tempfile.mkdtemp

    def mkdtemp_then_signal(*args, **kwargs):
        folder = made(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return folder

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp_then_signal)
    x, y = np.zeros((20, 2), np.float32), np.arange(20) % 2
    with pytest.raises(Interrupted), stoppable():
        if where == "prepare":
            writer.write_dataset(tmp_path / "d", "mine", ["a", "b"], {"train": (x, y), "test": (x, y)}, {})
        else:
            write_arrays(tmp_path / "d", x, y, x, y, class_names=["a", "b"])
    assert list(tmp_path.iterdir()) == []
