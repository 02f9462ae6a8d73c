"""The multi-node path with real parts: namespace hosts on this machine (cluster/netns.sh), MPICH's hydra and
Open MPI's mpirun across them through an ssh stand-in (cluster/nsssh), and a real Slurm (cluster/slurm.sh)
running the cluster/slurm.sbatch template unchanged.

Root only: without root the tests are skipped, with the reason printed; in CI (CI=true) a missing
prerequisite (root, the slurm/munge/openmpi packages) fails instead. One set of hosts and one Slurm per
module; everything they start is stopped by pid and removed in the fixtures' teardown, also after a failure.
Every command has a timeout, so a hang fails the test.
"""

import ctypes
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from distnet.blas import THREAD_VARS

from ..helpers import ROOT, mpiexec_path, run_distnet

pytestmark = [pytest.mark.cluster, pytest.mark.mpi]

CLUSTER = ROOT / "cluster"
NETNS, NSSSH, SLURM = CLUSTER / "netns.sh", CLUSTER / "nsssh", CLUSTER / "slurm.sh"
PREFIX = "dntst"  # namespaces of their own, apart from a cluster a user brought up (prefix dn)
EPOCHS = 3
TRAIN = ["spirals-mlp", "--epochs", str(EPOCHS), "--set", 'model.dtype="float64"',
         "--set", "train.log_every=1", "--set", "checkpoint.keep=1000", "--quiet"]
LONG = ["spirals-mlp", "--epochs", "500", "--set", "train.log_every=1", "--quiet"]


# -- prerequisites: skip here, fail in CI -------------------------------------------------------------------

SAID = set()


def need(ok, why, request):
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"cluster tests: {why} (CI must run them: .ci/run installs what they need)", pytrace=False)
    if why not in SAID:  # once, past pytest's capture, so that a plain `pytest -q` shows why
        SAID.add(why)
        plugins = request.config.pluginmanager
        reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"\ntests/cluster/test_cluster.py skipped: {why}", yellow=True)
    pytest.skip(f"cluster tests: {why}")


def need_commands(request, commands, package):
    missing = [c for c in commands if shutil.which(c, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None]
    need(not missing, f"{', '.join(missing)} not found: apt-get install -y {package}", request)


# -- running things on the hosts ----------------------------------------------------------------------------

def environment(extra=None, threads=1):
    """This process's environment for the hosts; threads=None leaves the BLAS thread count to distnet."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env.update(DISTNET_NETNS=PREFIX, PYTHONUNBUFFERED="1")
    if threads is not None:
        env.update({v: str(threads) for v in THREAD_VARS})
    env.update(extra or {})
    return env


def on(host, cmd, timeout=120, env=None, threads=1):
    """Run CMD on a namespace host; a CompletedProcess."""
    return subprocess.run([str(NETNS), "exec", host, *map(str, cmd)], capture_output=True, text=True,
                          timeout=timeout, env=environment(env, threads))


def start_on(host, cmd, env=None, threads=1):
    return subprocess.Popen([str(NETNS), "exec", host, *map(str, cmd)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=environment(env, threads))


def distnet(*args):
    """``distnet train ARGS`` as a command line."""
    return [sys.executable, "-m", "distnet", "train", *map(str, args)]


def hydra(hosts, n, ppn, cmd):
    return [mpiexec_path(), "-launcher", "ssh", "-launcher-exec", NSSSH, "-hosts", hosts, "-n", n, "-ppn", ppn,
            *cmd]


def train_args(data, out, *extra):
    """The options of ``distnet train`` for the compared runs."""
    return [*TRAIN, "--data", data, "--metrics", out / "m.jsonl", "--checkpoint-dir", out / "ck", *extra]


def metrics(path):
    return [json.loads(line) for line in open(path)]


def losses(lines):
    return [(m["step"], m["loss"]) for m in lines if m["event"] == "train"]


def summary(lines):
    assert lines and lines[-1]["event"] == "summary", lines[-3:]
    return lines[-1]


def link_bytes(host):
    """(received, sent) bytes of the host's veth, as the kernel counts them."""
    out = subprocess.run([str(NETNS), "bytes", host], capture_output=True, text=True, timeout=10,
                         env=environment(), check=True).stdout
    rx, tx = map(int, out.split())
    return rx, tx


def python_processes_with(text):
    """Pids of live Python processes (in any namespace) whose command line contains ``text``."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if os.path.basename(argv[0]).startswith("python") and any(text in a for a in argv) and state != "Z":
            found.append(int(p.name))
    return found


def wait_until(what, condition, timeout):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if condition():
            return time.monotonic() - t
        time.sleep(0.05)
    pytest.fail(f"{what}: not within {timeout} s")


def train_lines(path):
    try:
        return sum(1 for line in open(path) if '"train"' in line)
    except OSError:
        return 0


class RenameWatch:
    """Counts files renamed into a folder (inotify IN_MOVED_TO): a checkpoint is a temporary file renamed into
    place, so each name counted twice would mean two ranks wrote it."""

    def __init__(self, folder):
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0 and libc.inotify_add_watch(self.fd, str(folder).encode(), 0x80) >= 0

    def names(self):
        names = []
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            i = 0
            while i < len(buf):
                _, _, _, length = struct.unpack_from("iIII", buf, i)
                names.append(buf[i + 16:i + 16 + length].rstrip(b"\0").decode())
                i += 16 + length
        os.close(self.fd)
        return names


# -- fixtures: one set of hosts and one Slurm for the module --------------------------------------------------

@pytest.fixture(scope="module")
def hosts(request):
    """Namespace hosts h1, h2, h3 (h3 is the one that vanishes); removed, with all they run, at the end."""
    need(sys.platform == "linux" and os.geteuid() == 0, "they need root (network namespaces)", request)
    need_commands(request, ["ip", "tc", "unshare"], "iproute2 util-linux")
    env = environment()
    subprocess.run([str(NETNS), "down"], capture_output=True, timeout=60, env=env)  # a previous run's leftovers
    try:
        up = subprocess.run([str(NETNS), "up", "3"], capture_output=True, text=True, timeout=60, env=env)
        assert up.returncode == 0, up.stderr
        yield
    finally:
        down = subprocess.run([str(NETNS), "down"], capture_output=True, text=True, timeout=120, env=env)
        left = [ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                if ns.startswith(PREFIX + "-")]
        assert down.returncode == 0 and not left, (down.stderr, left)


@pytest.fixture(scope="module")
def slurm(hosts, request):
    """Slurm on h1 and h2 (munged, slurmctld, two slurmd); the environment for its clients."""
    need_commands(request, ["slurmctld", "slurmd", "sbatch", "srun", "scancel", "scontrol", "munged", "mungekey"],
                  "slurmctld slurmd slurm-client munge")
    env = environment()
    try:
        up = subprocess.run([str(SLURM), "up", "--nodes", "2", "--cpus", "2"], capture_output=True, text=True,
                            timeout=120, env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        conf = subprocess.run([str(SLURM), "conf"], capture_output=True, text=True, env=env).stdout.strip()
        # MPICH's UCX business card goes through PMI-1 as 9 puts of ~1 KB lines, which Slurm 22.05's pmi2
        # plugin reads with a single read(); for some sizes of environment and command line start-up then
        # fails ("mpi/pmi2: value not properly terminated") or hangs. Its ofi netmod puts 2 short lines.
        yield {"SLURM_CONF": conf, "MPIR_CVAR_CH4_NETMOD": "ofi"}
    finally:
        down = subprocess.run([str(SLURM), "down"], capture_output=True, text=True, timeout=120, env=env)
        assert down.returncode == 0, down.stderr


@pytest.fixture(scope="module")
def openmpi_path(hosts, request):
    """A folder holding mpi4py built against Debian's Open MPI (.ci/run builds it; else built here once)."""
    need_commands(request, ["mpirun.openmpi", "mpicc.openmpi"], "openmpi-bin libopenmpi-dev")
    r = subprocess.run([str(CLUSTER / "openmpi-mpi4py.sh")], capture_output=True, text=True, timeout=1200,
                       env=dict(os.environ, PYTHON=sys.executable))
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.fixture(scope="module")
def reference(spirals_data, tmp_path_factory):
    """The run everything is compared with: 2 ranks on this machine, no namespaces."""
    out = tmp_path_factory.mktemp("reference")
    r = run_distnet(["train", *train_args(spirals_data, out)], n=2, timeout=120)
    assert r.returncode == 0, r.stderr
    return metrics(out / "m.jsonl")


@pytest.fixture(scope="module")
def hydra_two_hosts(hosts, spirals_data, tmp_path_factory):
    """2 ranks on h1 and h2 under hydra with distnet choosing BLAS threads; the metrics, link bytes, renames."""
    out = tmp_path_factory.mktemp("hydra2")
    (out / "ck").mkdir()
    watch = RenameWatch(out / "ck")
    before = {h: link_bytes(h) for h in ("h1", "h2")}
    r = on("h1", hydra("h1,h2", 2, 1, distnet(*train_args(spirals_data, out))), threads=None)
    after = {h: link_bytes(h) for h in ("h1", "h2")}
    assert r.returncode == 0, r.stdout + r.stderr
    traffic = {h: (after[h][0] - before[h][0], after[h][1] - before[h][1]) for h in before}
    return {"out": out, "metrics": metrics(out / "m.jsonl"), "traffic": traffic, "renamed": watch.names()}


# -- hydra across hosts --------------------------------------------------------------------------------------

def test_hydra_across_two_hosts_trains_exactly_as_on_one(hydra_two_hosts, reference):
    lines = hydra_two_hosts["metrics"]
    assert losses(lines) == losses(reference) and len(losses(lines)) > 100
    assert summary(lines)["ranks"] == 2
    assert summary(lines)["param_hash"] == summary(reference)["param_hash"]


def test_gradients_cross_the_link(hydra_two_hosts):
    out = hydra_two_hosts["out"]
    ckpt = sorted((out / "ck").glob("ckpt-*.h5"))[-1]
    with h5py.File(ckpt, "r") as f:
        gradient_bytes = f["model/params"].size * 8
    steps = summary(hydra_two_hosts["metrics"])["steps"]
    # every step's allreduce moves at least one gradient's worth each way over each host's veth
    for host, (received, sent) in hydra_two_hosts["traffic"].items():
        assert received >= steps * gradient_bytes and sent >= steps * gradient_bytes, (host, received, sent)


def test_checkpoints_are_written_once_on_the_shared_disk(hydra_two_hosts):
    out = hydra_two_hosts["out"]
    files = sorted(p.name for p in (out / "ck").glob("ckpt-*.h5"))
    assert len(files) >= EPOCHS
    renamed = [n for n in hydra_two_hosts["renamed"] if n.startswith("ckpt-")]
    assert sorted(renamed) == files  # each renamed into place once: one writer (rank 0), not one per host


def test_start_line_names_hosts_and_per_host_blas_threads(hydra_two_hosts):
    start = hydra_two_hosts["metrics"][0]
    assert start["event"] == "start" and start["step"] == 0
    assert start["mpi_library"].startswith("MPICH")
    assert start["ranks"] == 2 and start["hosts"] == {"h1": [0], "h2": [1]}
    # one rank per host: each gets all of its host's cores (a count over the whole job would give 1)
    cores = os.cpu_count()
    assert start["blas_threads"] == [cores, cores]


def test_resume_across_hosts_continues_the_run(hosts, hydra_two_hosts, reference, spirals_data, tmp_path):
    stop = 100
    part = on("h1", hydra("h1,h2", 2, 1, distnet(*train_args(spirals_data, tmp_path, "--set",
                                                                 f"train.max_steps={stop}"))))
    assert part.returncode == 0, part.stdout + part.stderr
    assert summary(metrics(tmp_path / "m.jsonl"))["steps"] == stop
    rest = on("h1", hydra("h2,h1", 2, 1, distnet(*train_args(spirals_data, tmp_path, "--resume"))))
    assert rest.returncode == 0, rest.stdout + rest.stderr
    lines = metrics(tmp_path / "m.jsonl")
    assert [x for x in losses(lines) if x[0] > stop] == [x for x in losses(reference) if x[0] > stop]
    assert summary(lines)["param_hash"] == summary(reference)["param_hash"]


def test_two_hosts_by_two_ranks_follow_the_four_rank_trajectory(hosts, spirals_data, tmp_path):
    one = run_distnet(["train", *train_args(spirals_data, tmp_path / "one")], n=4, timeout=120)
    assert one.returncode == 0, one.stderr
    two = on("h1", hydra("h1,h2", 4, 2, distnet(*train_args(spirals_data, tmp_path / "two"))), threads=None)
    assert two.returncode == 0, two.stdout + two.stderr
    ref, lines = metrics(tmp_path / "one" / "m.jsonl"), metrics(tmp_path / "two" / "m.jsonl")
    assert [s for s, _ in losses(lines)] == [s for s, _ in losses(ref)]
    # four partial sums may be added in another order on two hosts than on one
    np.testing.assert_allclose([v for _, v in losses(lines)], [v for _, v in losses(ref)], rtol=1e-9, atol=1e-12)
    assert summary(lines)["ranks"] == 4
    start = lines[0]
    assert start["event"] == "start" and start["hosts"] == {"h1": [0, 1], "h2": [2, 3]}
    per_rank = max(1, os.cpu_count() // 2)  # cores / ranks on that host
    assert start["blas_threads"] == [per_rank] * 4


def test_blas_threads_are_counted_per_host_with_two_ranks_on_one_and_one_on_another(hosts, spirals_data, tmp_path):
    cmd = [mpiexec_path(), "-launcher", "ssh", "-launcher-exec", NSSSH, "-hosts", "h1:2,h2:1", "-n", "3",
           *distnet(*train_args(spirals_data, tmp_path, "--batch-size", "48", "--set", "train.max_steps=3"))]
    r = on("h1", cmd, threads=None)
    assert r.returncode == 0, r.stdout + r.stderr
    start = metrics(tmp_path / "m.jsonl")[0]
    assert start["hosts"] == {"h1": [0, 1], "h2": [2]}
    cores = os.cpu_count()
    # each host's cores split among its own ranks (over the whole job it would be cores // 3 for everyone)
    assert start["blas_threads"] == [max(1, cores // 2)] * 2 + [cores]


def test_a_vanished_host_ends_the_job_in_bounded_time(hosts, spirals_data, tmp_path):
    tag = tmp_path / "vanish.jsonl"
    job = start_on("h1", hydra("h1,h3", 2, 1, distnet(*LONG, "--data", spirals_data, "--metrics", tag)))
    try:
        wait_until("the job's first steps", lambda: train_lines(tag) >= 5, 60)
        t = time.monotonic()
        subprocess.run([str(NETNS), "kill", "h3"], check=True, timeout=10, env=environment())
        output, _ = job.communicate(timeout=60)
        took = time.monotonic() - t
    finally:
        job.kill()
    assert job.returncode != 0
    assert took < 30, took
    assert "mpiexec" in output, output  # the launcher says that it lost a process
    wait_until("no rank left", lambda: not python_processes_with(str(tag)), 10)


# -- Open MPI ------------------------------------------------------------------------------------------------

def test_openmpi_mpirun_across_hosts_matches_mpich(hosts, openmpi_path, reference, spirals_data, tmp_path):
    mpirun = ["mpirun.openmpi", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
              "--mca", "plm_rsh_agent", NSSSH, "--mca", "btl", "self,vader,tcp",
              "--mca", "btl_tcp_if_include", "eth0", "--mca", "oob_tcp_if_include", "eth0",
              "-H", "h1,h2", "-np", "2", "-x", "PYTHONPATH", "-x", "DISTNET_NETNS"]
    before = link_bytes("h2")
    r = on("h1", [*mpirun, *distnet(*train_args(spirals_data, tmp_path))], env={"PYTHONPATH": openmpi_path})
    assert r.returncode == 0, r.stdout + r.stderr
    received, sent = (a - b for a, b in zip(link_bytes("h2"), before))
    lines = metrics(tmp_path / "m.jsonl")
    assert losses(lines) == losses(reference)
    assert summary(lines)["ranks"] == 2 and summary(lines)["param_hash"] == summary(reference)["param_hash"]
    assert received > 1e6 and sent > 1e6, (received, sent)
    assert lines[0]["event"] == "start" and lines[0]["mpi_library"].startswith("Open MPI")


def test_openmpi_on_one_host_shares_memory_and_matches_mpich(openmpi_path, reference, spirals_data, tmp_path):
    """Open MPI's shared-memory windows (osc) under comm.sync = auto: shm, bitwise MPICH's 2-rank run."""
    r = subprocess.run(["mpirun.openmpi", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", "2",
                        "-x", "PYTHONPATH", *distnet(*train_args(spirals_data, tmp_path))],
                       env=dict(environment(), PYTHONPATH=openmpi_path), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = metrics(tmp_path / "m.jsonl")
    assert lines[0]["mpi_library"].startswith("Open MPI") and lines[0]["sync"] == "shm"
    assert reference[0]["sync"] == "shm" and losses(lines) == losses(reference)
    assert summary(lines)["param_hash"] == summary(reference)["param_hash"]


# -- Slurm ---------------------------------------------------------------------------------------------------

def sbatch(slurm, tmp_path, args, *options, env=None):
    """The template as a user would submit it, with this cluster's sizes given on the command line."""
    extra = dict(slurm, DISTNET_RUNS=str(tmp_path), DISTNET_VENV=str(Path(sys.executable).parents[1]), **(env or {}))
    extra.pop("MPIR_CVAR_CH4_NETMOD")  # the template runs unchanged: it chooses the MPICH network module itself
    return ["sbatch", "-N", "2", "--ntasks-per-node=1", f"--output={tmp_path}/%j.out", *options,
            CLUSTER / "slurm.sbatch", *args], extra


def test_sbatch_template_runs_one_job_across_two_nodes(slurm, reference, spirals_data, tmp_path):
    cmd, env = sbatch(slurm, tmp_path, [*TRAIN, "--data", spirals_data], "--wait", "--parsable")
    r = on("h1", cmd, env=env, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr + "".join(p.read_text() for p in tmp_path.glob("*.out"))
    job = r.stdout.strip().split(";")[0]
    lines = metrics(tmp_path / f"{job}.jsonl")
    assert summary(lines)["ranks"] == 2
    assert losses(lines) == losses(reference)
    assert summary(lines)["param_hash"] == summary(reference)["param_hash"]
    assert sorted((tmp_path / job).glob("ckpt-*.h5"))


def test_srun_with_pmi2_gives_every_rank_its_place(slurm, reference, spirals_data, tmp_path):
    r = on("h1", ["srun", "-N", "2", "-n", "2", "--mpi=pmi2", *distnet(*train_args(spirals_data, tmp_path))],
           env=slurm)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = metrics(tmp_path / "m.jsonl")
    assert summary(lines)["ranks"] == 2 and summary(lines)["param_hash"] == summary(reference)["param_hash"]
    assert lines[0]["event"] == "start" and lines[0]["hosts"] == {"h1": [0], "h2": [1]}


def test_srun_without_pmi_stops_every_process_naming_the_fix(slurm, spirals_data, tmp_path):
    r = on("h1", ["srun", "-l", "-N", "2", "-n", "2", "--mpi=none", *distnet(*train_args(spirals_data, tmp_path))],
           env=slurm)
    assert r.returncode != 0
    output = r.stdout + r.stderr
    for task in (0, 1):  # srun -l prefixes each line with its task
        assert any(line.startswith(f"{task}: ") and "--mpi=pmi2" in line for line in output.splitlines()), output
    assert not (tmp_path / "m.jsonl").exists() or not losses(metrics(tmp_path / "m.jsonl"))


def test_scancel_ends_every_rank_on_every_node(slurm, spirals_data, tmp_path):
    cmd, env = sbatch(slurm, tmp_path, [*LONG, "--data", spirals_data], "--parsable")
    r = on("h1", cmd, env=env)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().split(";")[0]
    metrics_file = tmp_path / f"{job}.jsonl"
    wait_until("the job's first steps", lambda: train_lines(metrics_file) >= 5, 60)
    assert len(python_processes_with(str(metrics_file))) == 2  # a rank on each node
    r = on("h1", ["scancel", job], env=slurm)
    assert r.returncode == 0, r.stderr
    wait_until("every rank gone after scancel", lambda: not python_processes_with(str(metrics_file)), 30)
    wait_until("the job cancelled", lambda: "JobState=CANCELLED" in on(
        "h1", ["scontrol", "-o", "show", "job", job], env=slurm).stdout, 30)


def test_the_time_limit_warning_stops_with_a_checkpoint_and_the_requeued_job_finishes_alike(
        slurm, reference, spirals_data, tmp_path):
    # rank 0 pauses before step 10 until it gets a signal (DISTNET_FAULT=sleep), so that the warning lands in a
    # running job however slowly Slurm passes it on
    cmd, env = sbatch(slurm, tmp_path, [*TRAIN, "--data", spirals_data], "--parsable", "--requeue",
                      "--open-mode=append", env={"DISTNET_FAULT": "sleep@0:10", "DISTNET_FAULT_SLEEP_S": "100",
                                           "DISTNET_REQUEUE_ON_TIMEOUT": "1"})
    r = on("h1", cmd, env=env)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().split(";")[0]
    wait_until("the job's first steps", lambda: train_lines(tmp_path / f"{job}.jsonl") >= 9, 60)
    # the time-limit warning (--signal=B:USR1@120), sent by hand: the batch script passes it on to srun
    r = on("h1", ["scancel", "--batch", "--signal=USR1", job], env=slurm)
    assert r.returncode == 0, r.stderr
    out = tmp_path / f"{job}.out"
    wait_until("the ranks' graceful stop", lambda: "distnet: stopped by SIGUSR1" in out.read_text(), 60)
    wait_until("the job back in the queue", lambda: "JobState=PENDING" in on(
        "h1", ["scontrol", "-o", "show", "job", job], env=slurm).stdout, 30)
    stop = [m for m in metrics(tmp_path / f"{job}.jsonl") if m["event"] == "stop"]
    # srun passes the signal on to each host separately: rank 1's may arrive after the ranks agreed to stop
    assert len(stop) == 1 and stop[0]["signal"] == "SIGUSR1" and stop[0]["ranks"] in ([0], [0, 1]), stop
    assert (tmp_path / job / f"ckpt-{stop[0]['step']:09d}.h5").exists()

    def finished():  # a requeued job waits two minutes before it may start again: let it start now, as often
        # as it is pending (the requeue, from inside the running job, may set that delay again after an update)
        state = on("h1", ["scontrol", "-o", "show", "job", job], env=slurm).stdout
        if "JobState=PENDING" in state:
            on("h1", ["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm)
        return "JobState=COMPLETED" in state

    wait_until("the requeued job's end", finished, 180)
    text = out.read_text()
    assert "requeueing job" in text and "resuming from the newest checkpoint" in text, text
    assert summary(metrics(tmp_path / f"{job}.jsonl"))["param_hash"] == summary(reference)["param_hash"]


def test_a_requeued_job_resumes_from_its_checkpoint(slurm, spirals_data, tmp_path):
    args = [*TRAIN, "--epochs", "12", "--data", spirals_data, "--checkpoint-every", "20"]
    ref = run_distnet(["train", *args, "--metrics", tmp_path / "ref.jsonl"], n=2, timeout=120)
    assert ref.returncode == 0, ref.stderr
    cmd, env = sbatch(slurm, tmp_path, args, "--parsable", "--requeue", "--open-mode=append")
    r = on("h1", cmd, env=env)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().split(";")[0]
    wait_until("a first checkpoint", lambda: any((tmp_path / job).glob("ckpt-*.h5")), 60)
    r = on("h1", ["scontrol", "requeue", job], env=slurm)  # as after a node failure or preemption
    assert r.returncode == 0, r.stderr
    # a requeued job waits two minutes before it may start again: let it start now
    wait_until("the job back in the queue", lambda: "JobState=PENDING" in on(
        "h1", ["scontrol", "-o", "show", "job", job], env=slurm).stdout, 30)
    r = on("h1", ["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm)
    assert r.returncode == 0, r.stderr
    wait_until("the requeued job's end", lambda: "JobState=COMPLETED" in on(
        "h1", ["scontrol", "-o", "show", "job", job], env=slurm).stdout, 120)
    out = (tmp_path / f"{job}.out").read_text()
    assert "CANCELLED" in out and "DUE TO JOB REQUEUE" in out, out  # the first run was stopped midway
    assert "resuming from the newest checkpoint" in out, out
    lines = metrics(tmp_path / f"{job}.jsonl")
    assert summary(lines)["param_hash"] == summary(metrics(tmp_path / "ref.jsonl"))["param_hash"]


def test_a_sweep_written_as_a_slurm_array_runs_each_point_with_srun(slurm, spirals_data, tmp_path):
    out = tmp_path / "sweep"
    r = run_distnet(["sweep", "spirals-mlp", "--data", spirals_data, "--out", out, "--ranks", "2", "--batch-sizes",
                     "256,1024", "--epochs", "3", "--target", "accuracy=0.55", "--full-curves", "--slurm-array"],
                    timeout=60)
    assert r.returncode == 0, r.stderr
    env = {k: v for k, v in slurm.items() if k != "MPIR_CVAR_CH4_NETMOD"}  # the sweep picks it under pmi2
    r = on("h1", ["sbatch", "--wait", "--parsable", "-N", "2", "--ntasks-per-node=1", out / "sweep.sbatch"],
           env=env, timeout=240)
    logs = "".join(p.read_text() for p in out.glob("slurm-*.out"))
    assert r.returncode == 0, r.stdout + r.stderr + logs
    for point in ("b00256-lr1-s0", "b01024-lr1-s0"):
        lines = metrics(out / point / "metrics.jsonl")
        start = lines[0]
        assert start["ranks"] == 2 and sorted(start["hosts"]) == ["h1", "h2"], start
        assert summary(lines)["steps"] == 3 * (3600 // int(point[1:6]))
        assert "srun -n 2 --mpi=pmi2" in (out / point / "log.txt").read_text()
    r = run_distnet(["sweep", "--report", out], timeout=120)
    assert r.returncode == 0 and "2 of 2 points done" in r.stderr, r.stderr


def test_sbatch_template_with_openmpi_uses_pmix(slurm, openmpi_path, reference, spirals_data, tmp_path):
    cmd, env = sbatch(slurm, tmp_path, [*TRAIN, "--data", spirals_data], "--wait", "--parsable",
                      env={"PYTHONPATH": openmpi_path})
    r = on("h1", cmd, env=env, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr + "".join(p.read_text() for p in tmp_path.glob("*.out"))
    job = r.stdout.strip().split(";")[0]
    lines = metrics(tmp_path / f"{job}.jsonl")
    assert summary(lines)["ranks"] == 2 and summary(lines)["param_hash"] == summary(reference)["param_hash"]


# -- PBS (no PBS here: its environment, simulated, with hydra reaching the hosts through nsssh) ----------------

def test_pbs_template_runs_across_hosts(hosts, reference, spirals_data, tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("h1\nh2\n")
    args = " ".join(map(str, [*TRAIN, "--data", spirals_data]))  # pbs.sh splits ARGS at spaces
    env = {"PBS_NODEFILE": str(nodefile), "PBS_O_WORKDIR": str(ROOT), "PBS_JOBID": "7.pbs", "ARGS": args,
           "DISTNET_RUNS": str(tmp_path), "HYDRA_LAUNCHER": "ssh", "HYDRA_LAUNCHER_EXEC": str(NSSSH)}
    r = on("h1", ["bash", CLUSTER / "pbs.sh"], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = metrics(tmp_path / "7.pbs.jsonl")
    assert summary(lines)["ranks"] == 2 and summary(lines)["param_hash"] == summary(reference)["param_hash"]
