"""The multi-node path with real parts: namespace hosts on this machine (cluster/netns.sh), MPICH's hydra and
Open MPI's mpirun across them through an ssh stand-in (cluster/nsssh), and a real Slurm (cluster/slurm.sh)
running the cluster/slurm.sbatch template unchanged.

Root only: without root the tests are skipped, with the reason printed; in CI (CI=true) a missing
prerequisite (root, the slurm/munge/openmpi packages) fails instead. One set of hosts and one Slurm per
module; everything they start is stopped by pid and removed in the fixtures' teardown, also after a failure.
Every command has a timeout, so a hang fails the test.

Two runs of these tests may share a machine: each makes its cluster under a prefix of its own (random, checked
against the namespaces and clusters already there), with its own subnet (netns.sh picks a free one), Slurm state
folder and ports, and records its pid as the owner, so that a later run takes down what a killed one left.
"""

import ctypes
import json
import os
import random
import shutil
import string
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from distnet.blas import THREAD_VARS

from ..helpers import ROOT, mpiexec_path, run_distnet, skip_here_fail_in_ci

pytestmark = [pytest.mark.cluster, pytest.mark.mpi]

CLUSTER = ROOT / "cluster"
NETNS, NSSSH, SLURM = CLUSTER / "netns.sh", CLUSTER / "nsssh", CLUSTER / "slurm.sh"
STATE_ROOT = Path(os.environ.get("DISTNET_NETNS_STATE", "/run/distnet-netns"))


def free_prefix(taken=()):
    """A cluster prefix no namespace and no recorded cluster on this machine uses: 't' and 4 random letters or
    digits (netns.sh allows 5 characters)."""
    try:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        listed = ""
    used = {line.split()[0].rsplit("-", 1)[0] for line in listed.splitlines() if line.strip()}
    used |= set(os.listdir(STATE_ROOT)) if STATE_ROOT.is_dir() else set()
    rng = random.Random()  # seeded from the system: two runs started at once choose apart
    while True:
        prefix = "t" + "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(4))
        if prefix not in used and prefix not in taken:
            return prefix


def slurm_port(prefix):
    """slurmctld's port for a cluster (slurmd takes the next): its own, from the prefix."""
    return 20000 + int(prefix[1:], 36) % 20000 * 2


PREFIX = free_prefix()  # this run's namespaces, apart from a user's cluster (prefix dn) and other runs'
# The compared runs: 2 epochs of 62 steps (124 > 100, the resume point of test_resume_across_hosts), enough to
# cross an epoch's end (the next epoch's sample order, an epoch-end checkpoint) and to compare every step's loss
# and the final parameters bitwise; the cost of a run is mostly its start-up
EPOCHS = 2
TRAIN = ["spirals-mlp", "--epochs", str(EPOCHS), "--set", 'model.dtype="float64"',
         "--set", "train.log_every=1", "--set", "checkpoint.keep=1000", "--quiet"]
LONG = ["spirals-mlp", "--epochs", "500", "--set", "train.log_every=1", "--quiet"]


# -- prerequisites: skip here, fail in CI -------------------------------------------------------------------

SAID = set()


def need(ok, why, request):
    if ok:
        return
    shown = None if why in SAID else f"\ntests/cluster/test_cluster.py skipped: {why}"  # said once
    SAID.add(why)
    skip_here_fail_in_ci(request, f"cluster tests: {why} (CI must run them: .ci/run installs what they need)",
                         f"cluster tests: {why}", shown)


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


def link_bytes(host, prefix=None):
    """(received, sent) bytes of the host's veth, as the kernel counts them (of another cluster's host: prefix)."""
    out = subprocess.run([str(NETNS), "bytes", host], capture_output=True, text=True, timeout=10,
                         env=environment({"DISTNET_NETNS": prefix or PREFIX}), check=True).stdout
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


def wait_until(what, condition, timeout, explain=None, every=0.05):
    """Poll ``condition`` every ``every`` seconds until it holds; past ``timeout`` seconds fail, with what
    ``explain()`` says, if given."""
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if condition():
            return time.monotonic() - t
        time.sleep(every)
    pytest.fail(f"{what}: not within {timeout} s" + (f"\n{explain()}" if explain else ""))


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

def cluster_up(prefix, hosts_count):
    """``netns.sh up`` under ``prefix``, owned by this process; the CompletedProcess."""
    return subprocess.run([str(NETNS), "up", str(hosts_count)], capture_output=True, text=True, timeout=60,
                          env=environment({"DISTNET_NETNS": prefix, "DISTNET_NETNS_OWNER": str(os.getpid())}))


def cluster_down(prefix):
    """Slurm and the hosts of ``prefix`` down (each by the pids it recorded); the namespaces left behind."""
    env = environment({"DISTNET_NETNS": prefix})
    slurm = subprocess.run([str(SLURM), "down"], capture_output=True, text=True, timeout=120, env=env)
    down = subprocess.run([str(NETNS), "down"], capture_output=True, text=True, timeout=120, env=env)
    assert slurm.returncode == 0 and down.returncode == 0, (slurm.stderr, down.stderr)
    return [ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
            if ns.startswith(prefix + "-")]


@pytest.fixture(scope="module")
def hosts(request):
    """Namespace hosts h1, h2, h3 (h3 is the one that vanishes); removed, with all they run, at the end."""
    global PREFIX
    need(sys.platform == "linux" and os.geteuid() == 0, "they need root (network namespaces)", request)
    need_commands(request, ["ip", "tc", "unshare"], "iproute2 util-linux")
    # what runs killed before their teardown left (their owner is gone); other runs' clusters stay
    subprocess.run([str(NETNS), "reap"], capture_output=True, timeout=300, env=environment())
    try:
        up = cluster_up(PREFIX, 3)
        if up.returncode != 0 and "is taken" in up.stderr:  # another run chose the same prefix just now
            PREFIX = free_prefix()
            up = cluster_up(PREFIX, 3)
        assert up.returncode == 0, up.stderr
        yield
    finally:
        left = cluster_down(PREFIX)
        assert not left, left


@pytest.fixture(scope="module")
def slurm(hosts, request):
    """Slurm on h1 and h2 (munged, slurmctld, two slurmd); the environment for its clients."""
    need_commands(request, ["slurmctld", "slurmd", "sbatch", "srun", "scancel", "scontrol", "munged", "mungekey"],
                  "slurmctld slurmd slurm-client munge")
    env = environment()
    try:
        up = subprocess.run([str(SLURM), "up", "--nodes", "2", "--cpus", "2", "--port", str(slurm_port(PREFIX))],
                            capture_output=True, text=True, timeout=120, env=env)
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
    """2 ranks on h1 and h2 under hydra with distnet choosing BLAS threads, a checkpoint every 50 steps (one
    mid-epoch, at step 100, for test_resume_across_hosts); the metrics, link bytes, renames."""
    out = tmp_path_factory.mktemp("hydra2")
    (out / "ck").mkdir()
    watch = RenameWatch(out / "ck")
    before = {h: link_bytes(h) for h in ("h1", "h2")}
    r = on("h1", hydra("h1,h2", 2, 1, distnet(*train_args(spirals_data, out, "--checkpoint-every", "50"))),
           threads=None)
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
    # from the checkpoint the two-host run wrote mid-epoch, at step 100; resumed with the hosts the other way round
    stop = 100
    (tmp_path / "ck").mkdir()
    shutil.copy(hydra_two_hosts["out"] / "ck" / f"ckpt-{stop:09d}.h5", tmp_path / "ck")
    rest = on("h1", hydra("h2,h1", 2, 1, distnet(*train_args(spirals_data, tmp_path, "--resume"))))
    assert rest.returncode == 0, rest.stdout + rest.stderr
    lines = metrics(tmp_path / "m.jsonl")
    assert lines[0]["event"] == "start" and lines[0]["hosts"] == {"h2": [0], "h1": [1]}
    assert losses(lines)[0][0] == stop + 1
    assert [x for x in losses(lines) if x[0] > stop] == [x for x in losses(reference) if x[0] > stop]
    assert summary(lines)["param_hash"] == summary(reference)["param_hash"]


def test_two_hosts_by_two_ranks_follow_the_four_rank_trajectory(hosts, spirals_data, tmp_path):
    # past the first epoch's end (15 steps of 256): four ranks on two cores are slow
    short = ["--batch-size", "256", "--set", "train.max_steps=18"]
    one = run_distnet(["train", *train_args(spirals_data, tmp_path / "one", *short)], n=4, timeout=120)
    assert one.returncode == 0, one.stderr
    two = on("h1", hydra("h1,h2", 4, 2, distnet(*train_args(spirals_data, tmp_path / "two", *short))), threads=None)
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


# -- faults: a lost host, a host whose processes all die, a trickle link; restarts on the hosts that answer ----

ABORT_S = 2  # comm.stall_abort_s of the fault tests; the job must end within ABORT_S + MARGIN_S
MARGIN_S = 3


def tagged(tag, attempt=None):
    """(namespace, pid, command) of every process on any of this run's hosts that belongs to the job tagged
    ``tag`` (its environment has DISTNET_TEST_TAG=tag: launchers, proxies, ranks), of ``attempt`` only if given."""
    # a process is on a host when its network namespace is the host's (what `ip netns pids` compares)
    hosts = {os.stat(f"/run/netns/{PREFIX}-{host}").st_ino: host for host in ("h1", "h2", "h3")}
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            host = hosts.get(os.stat(p / "ns" / "net").st_ino)
            if host is None:
                continue
            environ = (p / "environ").read_bytes().split(b"\0")
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"DISTNET_TEST_TAG={tag}".encode() in environ and (
                attempt is None or f"DISTNET_ATTEMPT={attempt}".encode() in environ):
            found.append((host, int(p.name), cmd[:80]))
    return found


class Lines:
    """A process's output lines as they come, each with the time it arrived (a thread reads the pipe)."""

    def __init__(self, proc):
        self.proc, self.lines = proc, []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def first(self, text):
        """The time of the first line holding ``text``, or None."""
        return next((t for t, line in self.lines if text in line), None)

    def text(self):
        self.thread.join(timeout=10)
        return "\n".join(line for _, line in self.lines)


def link(host, state):
    """Set ``host``'s link up or down, inside its own namespace."""
    subprocess.run(["ip", "-n", f"{PREFIX}-{host}", "link", "set", "eth0", state], check=True, timeout=10)


def fault_args(data, out, *extra):
    return ["spirals-mlp", "--data", data, "--metrics", out / "m.jsonl", "--checkpoint-dir", out / "ck",
            "--checkpoint-every", "10", "--set", "checkpoint.keep=1000", "--batch-size", "96", "--set",
            'model.dtype="float64"', "--set",
            "train.log_every=1", "--set", "train.max_steps=60", "--set", "comm.stall_warn_s=1", "--set",
            f"comm.stall_abort_s={ABORT_S}", "--quiet", *extra]


def test_a_lost_host_ends_the_attempt_in_bounded_time_and_the_job_goes_on_on_the_hosts_that_answer(
        hosts, spirals_data, tmp_path):
    """distnet run on h1, h2, h3 (a rank each): h3's link goes down mid-step. The attempt ends within
    comm.stall_abort_s plus a margin, one line naming h3, no process of it left on any host (h3's included:
    nothing can reach it there); the supervisor finds that h3 does not answer and resumes on h1 and h2 from
    the newest checkpoint. The result equals a resume from that checkpoint on h1 and h2 by hand."""
    tag = f"lost-{PREFIX}"
    out = tmp_path / "run"
    # rank 2 (on h3) pauses before step 25, so that its link goes down while the others wait in the step;
    # NSSSH_DETACH: h3's processes live apart from their launcher, as behind a real ssh
    env = {"HYDRA_LAUNCHER": "ssh", "HYDRA_LAUNCHER_EXEC": str(NSSSH), "NSSSH_DETACH": "1",
           "DISTNET_FAULT": "sleep@2:25", "DISTNET_FAULT_SLEEP_S": "2", "DISTNET_TEST_TAG": tag}
    sup = start_on("h1", [sys.executable, "-m", "distnet", "run", "--hosts", "h1,h2,h3", "--min-ranks", "2",
                          "--backoff", "0", "--host-timeout", "5", "--", "train", *fault_args(spirals_data, out)],
                   env=env)
    said = Lines(sup)
    try:
        wait_until("step 24", lambda: train_lines(out / "m.jsonl") >= 24, 60)
        down = time.monotonic()
        link("h3", "down")
        wait_until("the attempt's end", lambda: said.first("distnet run: the job failed") is not None,
                   ABORT_S + MARGIN_S + 30)
        ended = said.first("distnet run: the job failed") - down
        wait_until("no process of the first attempt on any host", lambda: not tagged(tag, attempt=0), 10)
        sup.wait(timeout=120)
    finally:
        link("h3", "up")
        sup.kill()
    output = said.text()
    assert sup.returncode == 0, output
    assert ended < ABORT_S + MARGIN_S, (ended, output)
    errors = [line for line in output.splitlines() if line.startswith("distnet: error:")]
    assert len(errors) == 1 and "rank 2 (host h3, pid" in errors[0] and "not responding" in errors[0], output
    assert "distnet run: host h3 does not answer (" in output, output
    lines = metrics(out / "m.jsonl")
    restarts = [m for m in lines if m["event"] == "restart"]
    assert len(restarts) == 1, output
    r = restarts[0]
    assert (r["hosts"], r["dropped"], r["ranks"], r["step"]) == (["h1", "h2"], ["h3"], 2, 20), r
    assert f"restart 1 of 3 on 2 rank(s) on h1, h2 (dropped h3) from {r['from_checkpoint']} (step 20)" in output
    assert summary(lines)["ranks"] == 2 and summary(lines)["steps"] == 60
    # by hand: the same checkpoint, resumed on h1 and h2
    hand = tmp_path / "hand"
    (hand / "ck").mkdir(parents=True)
    shutil.copy(r["from_checkpoint"], hand / "ck")
    by_hand = on("h1", hydra("h1,h2", 2, 1, distnet(*fault_args(spirals_data, hand, "--resume"))))
    assert by_hand.returncode == 0, by_hand.stdout + by_hand.stderr
    from distnet.metrics import read_records

    resumed = [(m["step"], m["loss"]) for m in read_records(out / "m.jsonl")[0] if m["event"] == "train"]
    expected = losses(metrics(hand / "m.jsonl"))
    assert [x for x in resumed if x[0] > 20] == expected and len(expected) == 40


def test_a_vanished_host_ends_the_job_in_bounded_time(hosts, spirals_data, tmp_path):
    """Every process on h3 killed at once (the host's kernel closes their connections): hydra ends the job
    within a second, exit non-zero, and nothing of it is left on any host."""
    tag = f"vanish-{PREFIX}"
    out = tmp_path / "vanish.jsonl"
    job = start_on("h1", hydra("h1,h3", 2, 1, distnet(*LONG, "--data", spirals_data, "--metrics", out)),
                   env={"DISTNET_TEST_TAG": tag})
    try:
        wait_until("the job's first steps", lambda: train_lines(out) >= 5, 60)
        t = time.monotonic()
        subprocess.run([str(NETNS), "kill", "h3"], check=True, timeout=10, env=environment())
        output, _ = job.communicate(timeout=60)
        took = time.monotonic() - t
    finally:
        job.kill()
    assert job.returncode != 0
    assert took < ABORT_S + MARGIN_S, took
    assert "mpiexec" in output, output  # the launcher says that it lost a process
    wait_until("nothing of the job left on any host", lambda: not tagged(tag), 10)


def shape(host, rate, change=False):
    """Shape ``host``'s link, both ends, to ``rate`` with tc tbf: slow, not dead (a queue of up to 10 s)."""
    for ns, dev in ((f"{PREFIX}-sw", host), (f"{PREFIX}-{host}", "eth0")):
        subprocess.run(["tc", "-n", ns, "qdisc", "change" if change else "add", "dev", dev, "root", "tbf", "rate",
                        rate, "burst", "4kb", "latency", "10s"], check=True, timeout=10)


def unshape(host):
    for ns, dev in ((f"{PREFIX}-sw", host), (f"{PREFIX}-{host}", "eth0")):
        subprocess.run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], capture_output=True, timeout=10)


def test_a_trickle_link_is_warned_about_and_aborted_only_past_the_bound(hosts, spirals_data, tmp_path):
    """h3's link shaped to a trickle (192 kbit/s: a step takes about 0.95 s, the link's pace whatever the load:
    long enough to be warned about, since a wait is first looked at after 0.5 s and the answers take 0.3 s, and
    under half of comm.stall_abort_s): the ranks warn, naming the other side's host, and go on; shaped down to
    nearly nothing, the job is aborted, by a rank that has waited comm.stall_abort_s, and within that bound plus
    a margin."""
    tag, abort_s = f"trickle-{PREFIX}", 2
    out = tmp_path / "m.jsonl"
    # each rank's stderr in a file of its own (the launcher's output would mix them)
    cmd = ["sh", "-c", f'exec "$@" 2>"{tmp_path}/err.$PMI_RANK"', "rank",
           *distnet(*LONG, "--data", spirals_data, "--metrics", out, "--set", "comm.stall_warn_s=0.3", "--set",
                    f"comm.stall_abort_s={abort_s}")]
    job = start_on("h1", hydra("h1,h3", 2, 1, cmd), env={"DISTNET_TEST_TAG": tag})
    errs = [tmp_path / "err.0", tmp_path / "err.1"]

    def said(text):
        return [line for f in errs if f.exists() for line in f.read_text().splitlines() if text in line]

    try:
        wait_until("the job's first steps", lambda: train_lines(out) >= 5, 60)
        shape("h3", "192kbit")
        wait_until("a warning", lambda: said("warning: stall"), 30)
        warned_at = train_lines(out)
        wait_until("a step after the warning", lambda: train_lines(out) > warned_at, 30)
        assert job.poll() is None and not said("error"), said("")
        tightened = time.monotonic()
        shape("h3", "8bit", change=True)
        job.communicate(timeout=60)
        took = time.monotonic() - tightened
    finally:
        unshape("h3")
        job.kill()
    assert job.returncode != 0
    warnings = said("warning: stall")
    assert all("(host h3, pid" in line or "(host h1, pid" in line for line in warnings), warnings
    errors = said("distnet: error:")
    assert errors and all(f"comm.stall_abort_s = {abort_s}" in line for line in errors), said("")
    for line in errors:  # the rank that aborted had waited the bound, and names the host across the trickle
        waited = int(line.split(" waited ")[1].split(" s ")[0])
        assert waited >= abort_s and ("rank 1 (host h3, pid" in line or "rank 0 (host h1, pid" in line), line
    assert took < abort_s + MARGIN_S + 1, took
    wait_until("nothing of the job left on any host", lambda: not tagged(tag), 10)


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


def submit(cmd, env):
    """Run an ``sbatch --parsable`` command line on h1; the job's id."""
    r = on("h1", cmd, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip().split(";")[0]


def ctl(slurm, *cmd):
    """A Slurm client command (scontrol, sinfo) in h1's network namespace, without the rest of a host (its own
    host name, PIDs, /dev/shm): what the tests poll Slurm with, at a third of the cost of ``on("h1", ...)``."""
    return subprocess.run(["ip", "netns", "exec", f"{PREFIX}-h1", *map(str, cmd)], capture_output=True, text=True,
                          timeout=60, env=environment(slurm))


def job_state(slurm, job):
    """``scontrol -o show job JOB``: a line per job (per task of an array job); fails once Slurm has forgotten
    the job (MinJobAge after its end), which a poll every fraction of a second never lets happen unnoticed."""
    r = ctl(slurm, "scontrol", "-o", "show", "job", job)
    assert r.returncode == 0 and r.stdout.strip(), f"job {job} unknown to Slurm: {r.stderr}"
    return r.stdout


ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
         "OUT_OF_MEMORY")


def wait_job(slurm, job, timeout, logs):
    """Wait for JOB (every task of an array job) to end, and fail unless each completed with exit code 0: what
    ``sbatch --wait`` does, but ``sbatch --wait`` looks every 2 s, this every 0.2 s. ``logs``: the files whose
    text a failure shows."""
    def ended():
        states = job_state(slurm, job).splitlines()
        return all(any(f"JobState={e} " in line for e in ENDED) for line in states) and states

    def explain():
        return "".join(Path(f).read_text() for f in logs if Path(f).exists())

    wait_until(f"the end of job {job}", ended, timeout, explain, every=0.2)
    states = job_state(slurm, job).splitlines()
    assert all("JobState=COMPLETED " in line and " ExitCode=0:0 " in line for line in states), \
        "\n".join(states) + explain()


def nodes_idle(slurm):
    return set(ctl(slurm, "sinfo", "-h", "-N", "-o", "%T").stdout.split()) == {"idle"}


def run_requeued(slurm, job, timeout, explain):
    """Wait for a requeued JOB to complete, letting it start at once whenever it is pending: Slurm holds a
    requeued job for two minutes (``scontrol update StartTime=now`` skips that; a requeue from inside the running
    job may set the hold again after an update, so it is skipped as often as it is pending). Not before its
    nodes are done with the killed run and the clock is past the second in which they were: a node refuses a
    job whose credential is not newer, in whole seconds, than the kill of its previous run ("Job credential
    revoked"), and the job fails."""
    ready = [None]  # when the nodes were seen idle with the job pending

    def completed():
        state = job_state(slurm, job)
        if "JobState=PENDING " in state:
            if ready[0] is None and nodes_idle(slurm):
                ready[0] = time.time()
            if ready[0] is not None and int(time.time()) > int(ready[0]):
                ctl(slurm, "scontrol", "update", f"JobId={job}", "StartTime=now")
                ready[0] = time.time()  # and again a second later, if still pending
        else:
            ready[0] = None
        assert not any(f"JobState={e} " in state for e in ENDED if e != "COMPLETED"), state + explain()
        return "JobState=COMPLETED " in state

    wait_until("the requeued job's end", completed, timeout, explain, every=0.2)


# (the srun tests first: srun gets its allocation at once, while slurmctld schedules the first batch job only
# about 3 s after its start)

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


def test_sbatch_template_runs_one_job_across_two_nodes(slurm, reference, spirals_data, tmp_path):
    cmd, env = sbatch(slurm, tmp_path, [*TRAIN, "--data", spirals_data], "--parsable")
    job = submit(cmd, env)
    wait_job(slurm, job, 180, [tmp_path / f"{job}.out"])
    lines = metrics(tmp_path / f"{job}.jsonl")
    assert summary(lines)["ranks"] == 2
    assert losses(lines) == losses(reference)
    assert summary(lines)["param_hash"] == summary(reference)["param_hash"]
    assert sorted((tmp_path / job).glob("ckpt-*.h5"))


def test_scancel_ends_every_rank_on_every_node(slurm, spirals_data, tmp_path):
    cmd, env = sbatch(slurm, tmp_path, [*LONG, "--data", spirals_data], "--parsable")
    job = submit(cmd, env)
    metrics_file = tmp_path / f"{job}.jsonl"
    wait_until("the job's first steps", lambda: train_lines(metrics_file) >= 5, 60)
    assert len(python_processes_with(str(metrics_file))) == 2  # a rank on each node
    r = on("h1", ["scancel", job], env=slurm)
    assert r.returncode == 0, r.stderr
    wait_until("every rank gone after scancel", lambda: not python_processes_with(str(metrics_file)), 30)
    wait_until("the job cancelled", lambda: "JobState=CANCELLED" in job_state(slurm, job), 30, every=0.1)


def slurm_explain(slurm, job, out):
    """What a failed wait on a Slurm job shows: its state, its output, slurmctld's and slurmd's last lines."""
    def explain():
        state = ctl(slurm, "scontrol", "-o", "show", "job", job)
        logs = [STATE_ROOT / PREFIX / "slurm" / "ctld" / "slurmctld.log",
                *sorted((STATE_ROOT / PREFIX / "slurm").glob("h*/slurmd.log"))]
        return "\n".join([state.stdout + state.stderr, out.read_text() if out.exists() else "(no output)",
                          *("".join(open(f).readlines()[-20:]) for f in logs if f.exists())])
    return explain


def test_the_time_limit_warning_stops_with_a_checkpoint_and_the_requeued_job_finishes_alike(
        slurm, reference, spirals_data, tmp_path):
    # rank 0 pauses before step 10 until it gets a signal (DISTNET_FAULT=sleep), so that the warning lands in a
    # running job however slowly Slurm passes it on. Sent once the 10th train line is out: the ranks then agree
    # to stop after step 10 at the earliest, so that the requeued job, which has the same DISTNET_FAULT, resumes
    # past the pause (sent earlier, the stop could come at step 10 and the resumed job pause there again)
    cmd, env = sbatch(slurm, tmp_path, [*TRAIN, "--data", spirals_data], "--parsable", "--requeue",
                      "--open-mode=append", env={"DISTNET_FAULT": "sleep@0:10", "DISTNET_FAULT_SLEEP_S": "100",
                                           "DISTNET_REQUEUE_ON_TIMEOUT": "1"})
    job = submit(cmd, env)
    out = tmp_path / f"{job}.out"
    explain = slurm_explain(slurm, job, out)
    wait_until("the job's first steps", lambda: train_lines(tmp_path / f"{job}.jsonl") >= 10, 60, explain)
    # the time-limit warning (--signal=B:USR1@120), sent by hand: the batch script passes it on to srun
    r = on("h1", ["scancel", "--batch", "--signal=USR1", job], env=slurm)
    assert r.returncode == 0, r.stderr
    wait_until("the ranks' graceful stop", lambda: "distnet: stopped by SIGUSR1" in out.read_text(), 60, explain)
    wait_until("the job back in the queue", lambda: "JobState=PENDING" in job_state(slurm, job), 30, explain, every=0.1)
    stop = [m for m in metrics(tmp_path / f"{job}.jsonl") if m["event"] == "stop"]
    # srun passes the signal on to each host separately: rank 1's may arrive after the ranks agreed to stop
    assert len(stop) == 1 and stop[0]["signal"] == "SIGUSR1" and stop[0]["ranks"] in ([0], [0, 1]), stop
    assert stop[0]["step"] > 10, stop  # past the pause (above)
    assert (tmp_path / job / f"ckpt-{stop[0]['step']:09d}.h5").exists()
    run_requeued(slurm, job, 120, explain)
    text = out.read_text()
    assert "requeueing job" in text and "resuming from the newest checkpoint" in text, text
    assert summary(metrics(tmp_path / f"{job}.jsonl"))["param_hash"] == summary(reference)["param_hash"]


def test_a_requeued_job_resumes_from_its_checkpoint(slurm, reference, spirals_data, tmp_path):
    # rank 0 pauses before step 21 (DISTNET_FAULT=sleep, ended by the requeue's SIGTERM), so that the requeue
    # lands in a running job past its first checkpoint (step 20), as after a node failure or preemption, however
    # slowly it comes. The requeued job has the same DISTNET_FAULT: should it resume from step 20 (no checkpoint
    # of the stop), it pauses at step 21 again, for 10 s at most
    args = [*TRAIN, "--data", spirals_data, "--checkpoint-every", "20"]
    cmd, env = sbatch(slurm, tmp_path, args, "--parsable", "--requeue", "--open-mode=append",
                      env={"DISTNET_FAULT": "sleep@0:21", "DISTNET_FAULT_SLEEP_S": "10"})
    job = submit(cmd, env)
    out = tmp_path / f"{job}.out"
    explain = slurm_explain(slurm, job, out)
    wait_until("the job's first steps", lambda: train_lines(tmp_path / f"{job}.jsonl") >= 21, 60, explain)
    assert (tmp_path / job / "ckpt-000000020.h5").exists()
    r = on("h1", ["scontrol", "requeue", job], env=slurm)  # as after a node failure or preemption
    assert r.returncode == 0, r.stderr
    wait_until("the job back in the queue", lambda: "JobState=PENDING" in job_state(slurm, job), 30, explain, every=0.1)
    run_requeued(slurm, job, 120, explain)
    text = out.read_text()
    assert "CANCELLED" in text and "DUE TO JOB REQUEUE" in text, text  # the first run was stopped midway
    assert "resuming from the newest checkpoint" in text, text
    lines = metrics(tmp_path / f"{job}.jsonl")
    assert summary(lines)["param_hash"] == summary(reference)["param_hash"]


def test_a_sweep_written_as_a_slurm_array_runs_each_point_with_srun(slurm, spirals_data, tmp_path):
    out = tmp_path / "sweep"
    r = run_distnet(["sweep", "spirals-mlp", "--data", spirals_data, "--out", out, "--ranks", "2", "--batch-sizes",
                     "256,1024", "--epochs", "3", "--target", "accuracy=0.55", "--full-curves", "--slurm-array"],
                    timeout=60)
    assert r.returncode == 0, r.stderr
    env = {k: v for k, v in slurm.items() if k != "MPIR_CVAR_CH4_NETMOD"}  # the sweep picks it under pmi2
    job = submit(["sbatch", "--parsable", "-N", "2", "--ntasks-per-node=1", out / "sweep.sbatch"], env)
    wait_job(slurm, job, 240, [out / f"slurm-{job}_{task}.out" for task in (0, 1)])
    for point in ("b00256-lr1-s0", "b01024-lr1-s0"):
        lines = metrics(out / point / "metrics.jsonl")
        start = lines[0]
        assert start["ranks"] == 2 and sorted(start["hosts"]) == ["h1", "h2"], start
        assert summary(lines)["steps"] == 3 * (3600 // int(point[1:6]))
        assert "srun -n 2 --mpi=pmi2" in (out / point / "log.txt").read_text()
    r = run_distnet(["sweep", "--report", out], timeout=120)
    assert r.returncode == 0 and "2 of 2 points done" in r.stderr, r.stderr


def test_sbatch_template_with_openmpi_uses_pmix(slurm, openmpi_path, reference, spirals_data, tmp_path):
    cmd, env = sbatch(slurm, tmp_path, [*TRAIN, "--data", spirals_data], "--parsable", env={"PYTHONPATH": openmpi_path})
    job = submit(cmd, env)
    wait_job(slurm, job, 180, [tmp_path / f"{job}.out"])
    lines = metrics(tmp_path / f"{job}.jsonl")
    assert summary(lines)["ranks"] == 2 and summary(lines)["param_hash"] == summary(reference)["param_hash"]


def test_distnet_run_in_a_slurm_allocation_restarts_on_the_nodes_left(slurm, spirals_data, tmp_path):
    """``distnet run`` as the batch script of a 2-node allocation (``--no-kill``: the allocation outlives a node):
    srun starts the job on h1 and h2; rank 1 crashes; between the attempts h2 is set down (scontrol); srun -w h2
    finds that, and the job resumes on h1 alone from its checkpoint and finishes."""
    out = tmp_path / "run"
    script = tmp_path / "job.sh"  # --backoff 2: time to set h2 down between the attempts
    script.write_text("#!/bin/bash\nexec " + " ".join(map(str, [
        sys.executable, "-m", "distnet", "run", "--min-ranks", "1", "--backoff", "2", "--host-timeout", "10", "--",
        "train", "spirals-mlp", "--data", spirals_data, "--metrics", out / "m.jsonl", "--checkpoint-dir", out / "ck",
        "--checkpoint-every", "10", "--set", "train.log_every=1", "--set", "train.max_steps=40", "--quiet"])) + "\n")
    script.chmod(0o755)
    env = dict(slurm, DISTNET_FAULT="crash@1:25")
    log = tmp_path / "job.out"
    job = submit(["sbatch", "--parsable", "--no-kill", "-N", "2", "--ntasks-per-node=1", f"--output={log}", script],
                 env)
    try:
        wait_until("the first attempt's end", lambda: log.exists() and "distnet run: the job failed" in log.read_text(),
                   60, slurm_explain(slurm, job, log))
        r = on("h1", ["scontrol", "update", "nodename=h2", "state=down", "reason=distnet-test"], env=slurm)
        assert r.returncode == 0, r.stderr
        wait_job(slurm, job, 120, [log])
    finally:
        on("h1", ["scancel", job], env=slurm)  # (a job that has ended is not touched)
        on("h1", ["scontrol", "update", "nodename=h2", "state=resume"], env=slurm)
    text = log.read_text()
    assert "distnet run: host h2 does not answer (srun -N 1 -n 1 -w h2 --overlap true: exit " in text, text
    assert "restart 1 of 3 on 1 rank(s) on h1 (dropped h2) from " in text and "ckpt-000000020.h5 (step 20)" in text
    lines = metrics(out / "m.jsonl")
    assert lines[0]["hosts"] == {"h1": [0], "h2": [1]}
    restart = [m for m in lines if m["event"] == "restart"]
    assert [(m["hosts"], m["dropped"], m["ranks"]) for m in restart] == [(["h1"], ["h2"], 1)]
    assert summary(lines)["ranks"] == 1 and summary(lines)["steps"] == 40
    # h2 back for whatever runs next (resumed, it is usable once its slurmd answers again)
    wait_until("h2 back in service", lambda: ctl(slurm, "sinfo", "-h", "-n", "h2", "-o", "%T").stdout.strip() == "idle",
               60, every=0.1)


def test_two_clusters_share_the_machine_without_disturbing_each_other(hosts, slurm, reference, spirals_data,
                                                                      tmp_path):
    """A second cluster with its own Slurm comes up while this one runs (its own prefix, subnet, state and
    ports), a job runs on each at the same time, and taking the second down leaves this one whole."""
    other = free_prefix(taken={PREFIX})
    mine = {"DISTNET_NETNS": PREFIX}
    theirs = {"DISTNET_NETNS": other}
    try:
        up = cluster_up(other, 2)
        assert up.returncode == 0, up.stderr
        r = subprocess.run([str(SLURM), "up", "--nodes", "2", "--cpus", "2", "--port", str(slurm_port(other))],
                           capture_output=True, text=True, timeout=120, env=environment(theirs))
        assert r.returncode == 0, r.stdout + r.stderr
        conf = subprocess.run([str(SLURM), "conf"], capture_output=True, text=True, env=environment(theirs)).stdout
        subnet = {p: (STATE_ROOT / p / "subnet").read_text().strip() for p in (PREFIX, other)}
        assert subnet[PREFIX] != subnet[other], subnet
        before = {p: link_bytes("h2", p) for p in (PREFIX, other)}
        jobs = []
        for name, extra in (("mine", dict(slurm, **mine)), ("theirs", dict(slurm, SLURM_CONF=conf.strip(), **theirs))):
            jobs.append(start_on("h1", ["srun", "-N", "2", "-n", "2", "--mpi=pmi2",
                                        *distnet(*train_args(spirals_data, tmp_path / name))], env=extra))
        outputs = [j.communicate(timeout=120)[0] for j in jobs]
        assert [j.returncode for j in jobs] == [0, 0], outputs
        for name in ("mine", "theirs"):
            lines = metrics(tmp_path / name / "m.jsonl")
            assert lines[0]["hosts"] == {"h1": [0], "h2": [1]}
            assert summary(lines)["param_hash"] == summary(reference)["param_hash"]
        for p in (PREFIX, other):  # each job crossed its own cluster's link
            assert link_bytes("h2", p)[0] > before[p][0] + 1e5, p
    finally:
        left = cluster_down(other)
    assert not left, left
    # this cluster is whole: its namespaces, its names, its Slurm with both nodes
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for host in ("h1", "h2", "h3"):
        assert f"{PREFIX}-{host}" in listed and Path(f"/etc/netns/{PREFIX}-{host}/hosts").exists()
    r = on("h1", ["sinfo", "-h", "-o", "%D %T"], env=slurm)
    assert r.stdout.split() == ["2", "idle"], r.stdout + r.stderr
    r = on("h1", ["srun", "-N", "2", "-n", "2", "hostname"], env=slurm, timeout=60)
    assert r.returncode == 0 and sorted(r.stdout.split()) == ["h1", "h2"], r.stdout + r.stderr


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
