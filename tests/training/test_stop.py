"""A stalled rank and signals, with real processes: the watchdog names the rank and ends the job; a signal
on a rank or on mpiexec stops at a step boundary with a checkpoint, and --resume finishes bitwise alike."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distnet.training.observers.signals import DUPLICATE_S, EXIT_STOPPED

from ..helpers import mpiexec_path, run_distnet

pytestmark = pytest.mark.mpi

F64 = ["--set", 'model.dtype="float64"', "--set", "train.log_every=1", "--quiet"]
STEPS = 40  # the run's length (train.max_steps)
PAUSE_AT = 10  # a rank pauses before this step (DISTNET_FAULT=sleep): the signal lands in a running job
UNTIL_SIGNAL = "30"  # DISTNET_FAULT_SLEEP_S: the pause ends on the signal the test sends, not on a clock
SLEEP_WAIT = ["--set", 'comm.wait="sleep"']  # a rank waiting seconds for a stalled one sleeps between polls
# instead of spinning on sched_yield: the watchdog's logic is the same for every comm.wait, and the wait then
# costs no CPU that another test running beside this one needs


def env(**extra):
    return dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)


def start(args, n=2, **extra):
    cmd = [mpiexec_path(), "-n", str(n), sys.executable, "-m", "distnet", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(**extra))


def lines(path):
    return [json.loads(s) for s in open(path)] if Path(path).exists() else []


def wait_for_step(proc, path, step, timeout=60):
    """Wait until the metrics show a train line at ``step`` or later (the job is training)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(m["event"] == "train" and m["step"] >= step for m in lines(path)):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    pytest.fail(f"no train line at step {step} within {timeout} s")


def ranks_of(launcher):
    """The pids of the python ranks under an mpiexec (children of its proxy), in pid order."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])

    def descends(pid):
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == launcher:
                return True
        return False

    found = []
    for pid in parents:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"distnet" in cmd and cmd.startswith(sys.executable.encode()) and descends(pid):
            found.append(pid)
    return sorted(found)


def rank_pid(launcher, rank, timeout=60):
    """The pid of the python process of ``rank`` (PMI_RANK in its environment) under ``launcher``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for pid in ranks_of(launcher):
            try:
                if f"\0PMI_RANK={rank}\0".encode() in b"\0" + Path(f"/proc/{pid}/environ").read_bytes():
                    return pid
            except OSError:
                continue
        time.sleep(0.02)
    raise AssertionError(f"no rank {rank} under mpiexec {launcher}")


@pytest.fixture(scope="module")
def reference(spirals_data, tmp_path_factory):
    """The uninterrupted run's final parameter hash."""
    out = tmp_path_factory.mktemp("ref")
    r = run_distnet(["train", "spirals-mlp", "--data", spirals_data, "--metrics", out / "m.jsonl", *F64,
                     "--set", f"train.max_steps={STEPS}"], n=2, timeout=120)
    assert r.returncode == 0, r.stderr
    return lines(out / "m.jsonl")[-1]["param_hash"]


@pytest.mark.parametrize("sig,target", [(signal.SIGTERM, "rank"), (signal.SIGINT, "rank"),
                                        (signal.SIGTERM, "launcher"), (signal.SIGINT, "launcher")])
def test_a_signal_stops_with_a_checkpoint_and_resume_finishes_bitwise_alike(
        tmp_path, spirals_data, reference, sig, target):
    # rank 1 pauses before step PAUSE_AT until it is sent the signal (directly, or passed on by mpiexec), while
    # rank 0 waits for it in the step: the signal surely lands in a running job, and nothing waits on a clock
    args = ["train", "spirals-mlp", "--data", spirals_data, "--metrics", tmp_path / "m.jsonl", *F64,
            "--checkpoint-dir", tmp_path / "ck", "--set", f"train.max_steps={STEPS}"]
    proc = start(args, DISTNET_FAULT=f"sleep@1:{PAUSE_AT}", DISTNET_FAULT_SLEEP_S=UNTIL_SIGNAL)
    try:
        wait_for_step(proc, tmp_path / "m.jsonl", PAUSE_AT - 1)
        pid = proc.pid if target == "launcher" else rank_pid(proc.pid, 1)
        os.kill(pid, sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    name = signal.Signals(sig).name
    assert proc.returncode == EXIT_STOPPED, err
    stop = [m for m in lines(tmp_path / "m.jsonl") if m["event"] == "stop"]
    assert len(stop) == 1 and stop[0]["signal"] == name, stop
    step = stop[0]["step"]
    assert PAUSE_AT <= step < STEPS
    saved = tmp_path / "ck" / f"ckpt-{step:09d}.h5"
    assert saved.exists()
    said = [line for line in err.splitlines() if "stopped by" in line]
    assert len(said) == 1, err
    assert said[0].startswith(f"distnet: stopped by {name}") and f"at step {step} (epoch 1)" in said[0]
    if target == "rank":  # rank 0 had no signal of its own
        assert said[0].startswith(f"distnet: stopped by {name} on rank 1 at step"), said[0]
    assert f"checkpoint {saved}; continue with --resume" in said[0]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    again = run_distnet([*args, "--resume"], n=2, timeout=120)
    assert again.returncode == 0, again.stderr
    summary = lines(tmp_path / "m.jsonl")[-1]
    assert summary["event"] == "summary" and summary["steps"] == STEPS
    assert summary["param_hash"] == reference


def test_without_a_checkpoint_folder_a_signal_stops_cleanly_and_says_nothing_was_saved(tmp_path, spirals_data):
    proc = start(["train", "spirals-mlp", "--data", spirals_data, "--metrics", tmp_path / "m.jsonl", *F64,
                  "--set", f"train.max_steps={STEPS}"], DISTNET_FAULT=f"sleep@0:{PAUSE_AT}",
                 DISTNET_FAULT_SLEEP_S=UNTIL_SIGNAL)
    try:
        wait_for_step(proc, tmp_path / "m.jsonl", PAUSE_AT - 1)
        os.kill(proc.pid, signal.SIGUSR1)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_STOPPED, err
    assert "distnet: stopped by SIGUSR1" in err and "nothing was saved" in err, err
    assert "Traceback" not in err


def test_a_second_signal_ends_the_job_at_once(tmp_path, spirals_data):
    # rank 0 sleeps before step 10 (until it is sent a signal: it is not, so the job can only end by the second
    # signal, however slow this machine); rank 1 waits for it in the step, is signalled there, and notes the
    # first signal; the second ends the job without waiting
    proc = start(["train", "spirals-mlp", "--data", spirals_data, "--metrics", tmp_path / "m.jsonl", *F64,
                  *SLEEP_WAIT, "--checkpoint-dir", tmp_path / "ck", "--set", f"train.max_steps={STEPS}"],
                 DISTNET_FAULT=f"sleep@0:{PAUSE_AT}", DISTNET_FAULT_SLEEP_S=UNTIL_SIGNAL)
    try:
        wait_for_step(proc, tmp_path / "m.jsonl", PAUSE_AT - 1)
        rank = rank_pid(proc.pid, 1)
        os.kill(rank, signal.SIGTERM)
        time.sleep(0.2)
        os.kill(rank, signal.SIGTERM)  # the same signal delivered twice (directly and by a launcher): one signal
        time.sleep(DUPLICATE_S + 0.5)
        assert proc.poll() is None
        os.kill(rank, signal.SIGTERM)  # a second one
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM again: stopping at once" in err, err
    assert not any(m["event"] == "stop" for m in lines(tmp_path / "m.jsonl"))


def stopped_rank(launcher, timeout=60):
    """The pid of the rank under ``launcher`` that has stopped (state T), waiting for one up to ``timeout`` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for pid in ranks_of(launcher):
            try:
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
                    return pid
            except OSError:
                continue
        time.sleep(0.02)
    raise AssertionError("no rank stopped itself")


def test_a_stopped_rank_is_named_and_the_job_ends_after_the_abort_time(tmp_path, spirals_data):
    # rank 1 stops itself (SIGSTOP) before step 8, inside the training step: a signal sent from here could
    # land while rank 0 evaluates, a wait bounded by comm.stall_io_abort_s (an hour), not by stall_abort_s.
    # Rank 0 asks at `warn` s, warns when the answer is overdue (answer_s = 1 s later), aborts at `abort` s: the
    # two lines come at different times. A legitimate wait would need 2 s (warn + answer_s) to warn too.
    warn, abort = 1, 2.5
    proc = start(["train", "spirals-mlp", "--data", spirals_data, "--metrics", tmp_path / "m.jsonl",
                  "--epochs", "300", "--set", "train.log_every=1", "--quiet", *SLEEP_WAIT,
                  "--set", f"comm.stall_warn_s={warn}", "--set", f"comm.stall_abort_s={abort}"],
                 DISTNET_FAULT="stop@1:8")
    victim = None
    try:
        victim = stopped_rank(proc.pid)
        stopped_at = time.monotonic()
        _, err = proc.communicate(timeout=abort + 40)
        took = time.monotonic() - stopped_at
    finally:
        if victim is not None:
            for s in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(victim, s)
                except ProcessLookupError:
                    pass
        proc.kill()
    assert proc.returncode == 1, err
    assert abort - 1 < took < abort + 30
    warning = [line for line in err.splitlines() if line.startswith("distnet: warning: stall:")]
    error = [line for line in err.splitlines() if line.startswith("distnet: error: stall:")]
    assert len(warning) == 1 and len(error) == 1, err
    assert f"(host {os.uname().nodename}, pid {victim}) not responding, last seen at step" in error[0]
    assert f"comm.stall_abort_s = {abort:g}" in error[0]
    assert "Traceback" not in err


def test_a_slow_checkpoint_write_is_not_taken_for_a_stall(tmp_path, spirals_data):
    # rank 0 spends 3 s off the clock after step 10 (as writing to a slow file system); a step's wait would be
    # aborted after 2 s, but the others wait for off-clock work in the observers' phase, which only warns
    # until comm.stall_io_abort_s (an hour by default)
    r = run_distnet(["train", "spirals-mlp", "--data", spirals_data, "--quiet", "--set", "train.max_steps=20",
                     *SLEEP_WAIT, "--set", "comm.stall_warn_s=1", "--set", "comm.stall_abort_s=2"], n=2,
                    timeout=120, env={"DISTNET_FAULT": "slow-save@0:10"})
    assert r.returncode == 0, r.stderr
    assert "distnet: error" not in r.stderr, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "stall" in line]
    assert all(line.startswith("distnet: warning: stall:") and "(eval/checkpoint)" in line for line in warnings), \
        r.stderr


def test_a_wait_outside_the_step_is_bounded_too(tmp_path, spirals_data):
    # the same slow write, now longer than comm.stall_io_abort_s: the waiting rank names rank 0 and ends the job
    r = run_distnet(["train", "spirals-mlp", "--data", spirals_data, "--quiet", "--set", "train.max_steps=20",
                     *SLEEP_WAIT, "--set", "comm.stall_warn_s=1", "--set", "comm.stall_io_abort_s=2"], n=2,
                    timeout=120, env={"DISTNET_FAULT": "slow-save@0:10", "DISTNET_FAULT_SLEEP_S": "60"})
    assert r.returncode == 1, r.stderr
    error = [line for line in r.stderr.splitlines() if line.startswith("distnet: error: stall:")]
    assert len(error) == 1, r.stderr
    assert "at step 10 (eval/checkpoint) for rank 0 (host" in error[0], error[0]
    assert "comm.stall_io_abort_s = 2" in error[0]
    assert "Traceback" not in r.stderr

LATE = """
import os, signal, sys
from distnet import config as C
from distnet.training.loop import train
from distnet.training.observers.base import Observer
from distnet.training.observers.signals import Stopped

class Signal(Observer):  # this rank is sent SIGUSR1 at step 3, as a launcher passes it on
    def on_step(self, run, stats):
        if run.pos.global_step == 3:
            os.kill(os.getpid(), signal.SIGUSR1)

cfg = C.load("spirals-mlp", [f'data.path="{sys.argv[1]}"', "train.max_steps=20", "log.quiet=true"])
try:
    train(cfg, observers=[Signal()])
except Stopped:
    print("stopped", flush=True)
# the same signal arriving late (srun passes it on to each host separately): it must not kill the rank now
os.kill(os.getpid(), signal.SIGUSR1)
os.kill(os.getpid(), signal.SIGTERM)  # another signal still has its previous handler (the default: terminate)
print("not reached", flush=True)
"""


def test_the_stopping_signal_arriving_late_is_ignored_and_the_others_are_restored(tmp_path, spirals_data):
    script = tmp_path / "late.py"
    script.write_text(LATE)
    r = subprocess.run([sys.executable, str(script), str(spirals_data)], capture_output=True, text=True, timeout=120,
                       env=env())
    assert r.stdout.splitlines() == ["stopped"], (r.stdout, r.stderr)
    assert r.returncode == -signal.SIGTERM, r.stderr


def test_a_ranks_first_signal_after_the_agreed_stop_and_a_quick_duplicate_do_not_abort(monkeypatch):
    """The same signal reaches ranks at different times (srun passes it on to each host): a rank whose own
    signal comes after the ranks agreed to stop on another's must not take it for a second signal."""
    from distnet.training.observers import signals as S

    class World:
        rank, aborted = 1, None

        def abort(self, code):
            self.aborted = code

    clock = [100.0]
    monkeypatch.setattr(S.time, "monotonic", lambda: clock[0])
    w = World()
    obs = S.Signals(w)
    obs.stopped = ("SIGUSR1", [0])  # rank 0's signal stopped the run; this rank's arrives now
    obs._handle(signal.SIGUSR1, None)
    clock[0] += 0.5
    obs._handle(signal.SIGUSR1, None)  # and again, passed on by a launcher too
    assert w.aborted is None and obs.pending is None
    clock[0] += S.DUPLICATE_S
    obs._handle(signal.SIGUSR1, None)  # a real second signal: the job ends at once
    assert w.aborted == 128 + signal.SIGUSR1
    w.aborted, obs2 = None, S.Signals(w)
    obs2._handle(signal.SIGTERM, None)
    assert obs2.pending == "SIGTERM" and w.aborted is None
    obs2._handle(signal.SIGINT, None)  # another signal, even at once, is a second one
    assert w.aborted == 128 + signal.SIGINT


CUT_OFF = """
import signal, sys, time
from distnet import comm
from distnet.comm import failures

failures.ABORT_EXIT_S = 0.5
w = comm.world()
w.wait_mode("sleep")  # rank 1 waits without spinning: the same watchdog, no CPU taken from other tests
w.watch(0.5, 1.0)
w.phase = "step"  # bounded by abort_s (the training step)
if w.rank == 0:
    time.sleep(120)  # silent, as a rank behind a dead link: it answers no probe
else:
    w.abort = lambda code: time.sleep(120)  # MPI_Abort that cannot reach the launcher: it never returns
    w.barrier()
"""


def test_a_rank_whose_abort_cannot_reach_its_launcher_ends_itself(tmp_path):
    """The stall watchdog of a rank cut off from the others (and from its launcher) names them and ends its
    own process, even when MPI_Abort blocks (failures.abort_job: SIGALRM's default action after ABORT_EXIT_S)."""
    script = tmp_path / "cut_off.py"
    script.write_text(CUT_OFF)
    t = time.monotonic()
    r = subprocess.run([mpiexec_path(), "-n", "2", sys.executable, str(script)], capture_output=True, text=True,
                       timeout=60, env=env())
    took = time.monotonic() - t
    assert r.returncode != 0
    error = [line for line in r.stderr.splitlines() if line.startswith("distnet: error: stall: rank 1 ")]
    assert len(error) == 1 and "for rank 0 (host" in error[0] and "not responding" in error[0], r.stderr
    assert took < 15, took  # 1 s to the abort, 0.5 s to pass the line on, 0.5 s until SIGALRM, start-up


def test_abort_job_ends_the_process_when_mpi_abort_returns():
    from distnet.comm.failures import abort_job

    script = ("import sys\nfrom distnet.comm.failures import abort_job\n"
              "class W:\n    size = 2\n    def abort(self, code):\n        pass\n"
              "abort_job(W(), 7)\nprint('not reached')\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env())
    assert r.returncode == 7 and "not reached" not in r.stdout, (r.stdout, r.stderr)
    assert abort_job  # imported: the name the watchdog and fail_alone call
