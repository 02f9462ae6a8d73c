"""``distnet run``, with real processes: a job killed once is restarted from its checkpoint and ends bitwise
like an uninterrupted run; user errors are not restarted; a restart may use fewer ranks."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ..helpers import run_distnet

pytestmark = pytest.mark.mpi

F64 = ["--set", 'model.dtype="float64"', "--set", "train.log_every=5", "--quiet"]
STEPS, EVERY, CRASH = 40, 10, 25  # rank 1 dies at step 25; the newest checkpoint then is step 20


def lines(path):
    return [json.loads(s) for s in open(path)]


def supervise(args, timeout=240, env=None):
    full = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "distnet", "run", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=full)


def job(data, out):
    return ["train", "spirals-mlp", "--data", data, "--metrics", out / "m.jsonl", "--checkpoint-dir", out / "ck",
            "--checkpoint-every", EVERY, *F64, "--set", f"train.max_steps={STEPS}"]


def test_a_job_killed_once_is_restarted_and_ends_bitwise_like_an_uninterrupted_run(tmp_path, spirals_data):
    ref = run_distnet(job(spirals_data, tmp_path / "ref"), n=2, timeout=120)
    assert ref.returncode == 0, ref.stderr
    r = supervise(["-n", 2, "--max-restarts", 2, "--backoff", 0.1, "--", *job(spirals_data, tmp_path / "sup")],
                  env={"DISTNET_FAULT": f"crash@1:{CRASH}"})
    assert r.returncode == 0, r.stderr
    m = lines(tmp_path / "sup" / "m.jsonl")
    restarts = [x for x in m if x["event"] == "restart"]
    assert len(restarts) == 1, r.stderr
    assert restarts[0]["attempt"] == 1 and restarts[0]["step"] == 20 and restarts[0]["ranks"] == 2
    assert restarts[0]["from_checkpoint"].endswith("ckpt-000000020.h5") and "exit" in restarts[0]["reason"]
    assert "restart 1 of 2 on 2 rank(s)" in r.stderr
    assert m[-1]["event"] == "summary" and m[-1]["steps"] == STEPS
    assert m[-1]["param_hash"] == lines(tmp_path / "ref" / "m.jsonl")[-1]["param_hash"]


def test_a_restart_may_use_fewer_ranks_but_not_fewer_than_min_ranks(tmp_path, spirals_data):
    r = supervise(["-n", 2, "--ranks-on-restart", 1, "--min-ranks", 1, "--backoff", 0, "--",
                   *job(spirals_data, tmp_path / "a")], env={"DISTNET_FAULT": f"crash@1:{CRASH}"})
    assert r.returncode == 0, r.stderr
    m = lines(tmp_path / "a" / "m.jsonl")
    assert [x["ranks"] for x in m if x["event"] == "restart"] == [1]
    assert m[-1]["event"] == "summary" and m[-1]["ranks"] == 1 and m[-1]["steps"] == STEPS
    r = supervise(["-n", 2, "--ranks-on-restart", 1, "--backoff", 0, "--", *job(spirals_data, tmp_path / "b")],
                  env={"DISTNET_FAULT": f"crash@1:{CRASH}"})
    assert r.returncode != 0 and "fewer than --min-ranks 2: not restarting" in r.stderr


def test_user_errors_are_not_restarted_and_restarts_run_out(tmp_path, spirals_data):
    r = supervise(["-n", 2, "--", "train", "spirals-mlp", "--data", tmp_path / "nowhere"], timeout=120)
    assert r.returncode == 2 and "restart 1" not in r.stderr, r.stderr
    assert r.stderr.count("distnet: error:") == 1
    r = supervise(["-n", 2, "--max-restarts", 0, "--", *job(spirals_data, tmp_path / "c")],
                  env={"DISTNET_FAULT": f"crash@1:{CRASH}"})
    assert r.returncode not in (0, 2) and "no restarts left (--max-restarts 0)" in r.stderr, r.stderr
    r = supervise(["-n", 2, "--", "eval", "x"], timeout=60)
    assert r.returncode == 2 and "distnet run supervises a training job" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["--batchsize", "4"], "distnet run: the job's arguments: distnet train has no option --batchsize: did you "
                           "mean --batch-size?"),
    (["--set", "train.epochs", "4"], "--set train.epochs 4: write --set train.epochs=4"),
])
def test_the_jobs_misspelled_options_are_one_line_errors(args, message):
    from distnet.errors import UserError
    from distnet.supervise import job_config

    with pytest.raises(UserError) as e:
        job_config(["train", "spirals-mlp", *args])
    assert str(e.value) == message


def test_a_signal_to_the_supervisor_stops_the_job_gracefully_and_ends_supervision(tmp_path, spirals_data):
    out = tmp_path / "s"
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               DISTNET_FAULT="sleep@0:10")  # rank 0 pauses before step 10: the signal lands in a running job
    proc = subprocess.Popen([sys.executable, "-m", "distnet", "run", "-n", "2", "--",
                             *map(str, job(spirals_data, out))],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        end = time.monotonic() + 60
        while not (out / "m.jsonl").exists() or '"step": 5,' not in (out / "m.jsonl").read_text():
            assert time.monotonic() < end and proc.poll() is None, "the job did not reach step 5"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 3, err
    assert "distnet: stopped by SIGTERM" in err and "restart" not in err, err
    assert [m["event"] for m in lines(out / "m.jsonl")][-1] == "stop"


def test_a_restart_without_a_checkpoint_keeps_the_earlier_lines_and_marks_the_new_attempt(tmp_path, spirals_data):
    """The first attempt dies before its first checkpoint: the restart starts from step 0 but appends to the
    metrics file (never truncates it); the new attempt's start line says which attempt it is."""
    out = tmp_path / "m"
    args = ["train", "spirals-mlp", "--data", spirals_data, "--metrics", out / "m.jsonl", "--checkpoint-dir",
            out / "ck", "--checkpoint-every", 1000, *F64, "--set", "train.log_every=1", "--set",
            f"train.max_steps={STEPS}"]
    r = supervise(["-n", 2, "--backoff", 0, "--", *args], env={"DISTNET_FAULT": f"crash@1:{CRASH}"})
    assert r.returncode == 0, r.stderr
    assert "restart 1 of 3 on 2 rank(s) from the start (no checkpoint yet)" in r.stderr, r.stderr
    m = lines(out / "m.jsonl")
    events = [x["event"] for x in m]
    first = events.index("restart")
    assert events[0] == "start" and "attempt" not in m[0]
    # the first attempt's lines are all there, up to the last step before the crash
    assert [x["step"] for x in m[:first] if x["event"] == "train"] == list(range(1, CRASH + 1))
    assert m[first] == {**m[first], "attempt": 1, "step": 0, "from_checkpoint": None}
    assert m[first + 1]["event"] == "start" and m[first + 1]["attempt"] == 1 and m[first + 1]["step"] == 0
    assert [x["step"] for x in m[first:] if x["event"] == "train"] == list(range(1, STEPS + 1))
    assert events[-1] == "summary" and events.count("start") == 2

    from distnet.metrics import read_records

    records, segments = read_records(out / "m.jsonl")  # a reader takes the new attempt as the run
    assert [x["step"] for x in records if x["event"] == "train"] == list(range(1, STEPS + 1))
    assert len(segments) == 2


def run_args(*args):
    import argparse

    from distnet.supervise import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args([*map(str, args), "--", "train", "spirals-mlp"])


@pytest.mark.parametrize("given,hosts,ranks", [
    (["--hosts", "a,b,c", "-n", 6], [("a", 2), ("b", 2), ("c", 2)], 6),
    (["--hosts", "a,b"], [("a", 1), ("b", 1)], 2),
    (["--hosts", "a:2,b:1"], [("a", 2), ("b", 1)], 3),
])
def test_hosts_and_their_ranks(given, hosts, ranks):
    from distnet.supervise import job_hosts

    a = run_args(*given)
    assert [(h.name, h.slots) for h in job_hosts(a, "mpiexec")] == hosts and a.ranks == ranks


def test_a_hostfile_and_a_slurm_allocation_give_the_hosts(tmp_path, monkeypatch):
    from distnet.supervise import job_hosts

    f = tmp_path / "hosts"
    f.write_text("# the nodes\nn1\nn1\nn2 slots=2\n\n")  # a PBS node file repeats a host per core
    a = run_args("--hostfile", f)
    assert [(h.name, h.slots) for h in job_hosts(a, "mpiexec")] == [("n1", 2), ("n2", 2)] and a.ranks == 4
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[07-09]")
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "2(x3)")
    a = run_args()
    assert [(h.name, h.slots) for h in job_hosts(a, "srun")] == [("node07", 2), ("node08", 2), ("node09", 2)]
    a = run_args("-n", 3)
    assert [h.slots for h in job_hosts(a, "srun")] == [1, 1, 1] and a.ranks == 3
    assert job_hosts(run_args(), "mpiexec") is None  # mpiexec without hosts: this machine, as before


@pytest.mark.parametrize("given,message", [
    (["--hosts", "a,b,c", "-n", 4], "-n 4 ranks do not divide over 3 hosts"),
    (["--hosts", "a:2,b:2", "-n", 3], "-n 3, but the hosts' slots add up to 4"),
    (["--hosts", "a,b", "--ranks-on-restart", 1], "--ranks-on-restart is for a job without hosts"),
    (["--hosts", "a,b", "--hostfile", "f"], "--hosts or --hostfile, not both"),
    (["--hosts", "a:0"], "a host needs at least 1 slot"),
])
def test_host_mistakes_are_one_line_errors(given, message):
    from distnet.errors import UserError
    from distnet.supervise import job_hosts

    with pytest.raises(UserError, match=message):
        job_hosts(run_args(*given), "mpiexec")


def test_the_launchers_command_lines_and_the_check_of_which_hosts_answer(monkeypatch):
    from distnet.supervise import Host, Launcher

    hosts = [Host("a", 2), Host("b", 2)]
    hydra = Launcher("mpiexec")
    hydra._flavour = "hydra"
    assert hydra.job(4, hosts)[1:] == ["-hosts", "a:2,b:2", "-n", "4"]
    assert hydra.probe("b")[1:] == ["-hosts", "b", "-n", "1", "hostname"]
    hydra._flavour = "openmpi"
    assert hydra.job(4, hosts)[1:] == ["-H", "a:2,b:2", "-np", "4"]
    monkeypatch.setenv("DISTNET_SRUN_MPI", "pmi2")
    srun = Launcher("srun")
    assert srun.job(4, hosts) == ["srun", "-n", "4", "--kill-on-bad-exit=1", "--mpi=pmi2", "-N", "2", "-w", "a,b",
                                  "--ntasks-per-node=2"]
    assert srun.probe("b") == ["srun", "-N", "1", "-n", "1", "-w", "b", "--overlap", "true"]
    # every host asked at once: one answers, one fails, one never answers (cut off after the timeout)
    probes = {"ok": ["true"], "bad": ["sh", "-c", "echo refused >&2; exit 255"], "gone": ["sleep", "30"]}
    monkeypatch.setattr(srun, "probe", lambda h: probes[h])
    t = time.monotonic()
    answers = srun.answering([Host(h, 1) for h in probes], timeout=1.0)
    assert time.monotonic() - t < 5
    assert answers["ok"] is None and answers["bad"].endswith("exit 255: refused")
    assert answers["gone"] == "no answer to sleep 30 within 1 s"


def test_a_global_batch_the_ranks_do_not_divide_is_one_line(tmp_path, spirals_data):
    r = supervise(["--hosts", "a,b,c", "--", *job(spirals_data, tmp_path), "--batch-size", 64], timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == ["distnet: error: distnet run: the global batch 64 does not divide by "
                                             "3 rank(s): give a --batch-size that 3 divides"]
