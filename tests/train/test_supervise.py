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
