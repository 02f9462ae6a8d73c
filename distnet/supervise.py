"""``distnet run -n N [options] -- train CONFIG ...``: start a training job and restart it when it fails.

The supervisor starts the job with the launcher (mpiexec beside this Python, or srun inside a Slurm
allocation) and waits. When the job fails with anything but a user error (exit 2) or a stop on a signal
(exit 3, ``EXIT_STOPPED``), it starts it again with ``--resume`` from the newest checkpoint, up to
``--max-restarts`` times, waiting ``--backoff`` seconds before the first restart and twice as long before each
next one (as torchrun does).

Hosts. With ``--hosts h1,h2,...`` or ``--hostfile FILE`` (for mpiexec/mpirun), or inside a Slurm allocation
(its ``SLURM_JOB_NODELIST``), the job runs on those hosts, the same number of ranks on each (``-n`` divided by
the hosts, or ``host:slots``). Before each restart the supervisor asks every host the job ran on whether it
answers, the launcher's own way and all at once, each within ``--host-timeout`` seconds (``mpiexec -hosts H -n 1
hostname``, ``mpirun -H H -np 1 hostname``, ``srun -N 1 -n 1 -w H true``), and restarts on those that did, each
with its ranks, as long as that leaves ``--min-ranks``. The global batch is kept (each rank's share grows); a
batch the new rank count does not divide is one line, and no restart. Without hosts, a restart may use fewer
ranks with ``--ranks-on-restart``; resuming on another rank count follows the same sample order.

Each restart is a line in the job's metrics (``{"event": "restart", "attempt": k, "reason": ..., "ranks": R,
"from_checkpoint": ..., "hosts": [...], "dropped": [...]}``) and on stderr. The job sees its attempt number in
``DISTNET_ATTEMPT`` (0 first): its metrics file is appended to, never truncated, from attempt 1 on, and its
start line has ``attempt``; fault injection (``DISTNET_FAULT``) fires on attempt 0 only. SIGINT, SIGTERM and
SIGUSR1 sent to the supervisor are passed on to the job (which then stops gracefully) and end the
supervision: a job stopped on purpose is not restarted. The job runs in its own session, so a Ctrl-C on the
terminal reaches it once, through the supervisor.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import checkpoint as ckpt
from .cli import check_sets, unrecognized
from .errors import UserError
from .training.observers.signals import EXIT_STOPPED, SIGNALS

FINAL = {0: "finished", 2: "a user error", EXIT_STOPPED: "stopped by a signal"}  # exit codes never restarted
HOST_TIMEOUT_S = 10.0
BATCH_FIX = ("restarts keep the global batch, train.batch_size, and recompute each rank's share: give a "
             "--batch-size that every rank count down to --min-ranks divides")


def add_arguments(p):
    p.add_argument("-n", "--ranks", type=int, metavar="N",
                   help="ranks to start (default 1; with hosts: one per host, or their slots)")
    p.add_argument("--max-restarts", type=int, default=3, metavar="K", help="restarts at most (default 3)")
    p.add_argument("--backoff", type=float, default=1.0, metavar="S",
                   help="seconds before the first restart, doubled before each next (default 1)")
    p.add_argument("--ranks-on-restart", type=int, metavar="R",
                   help="without hosts: ranks for restarts (default: N), fewer when a host is gone")
    p.add_argument("--min-ranks", type=int, metavar="M", help="never restart on fewer ranks (default: N)")
    p.add_argument("--hosts", metavar="H1,H2,...",
                   help="the hosts to run on (mpiexec/mpirun), HOST or HOST:SLOTS; restarts go to those that answer")
    p.add_argument("--hostfile", metavar="FILE",
                   help="the hosts, one a line (HOST, HOST:SLOTS or HOST slots=SLOTS; a host listed k times has k "
                        "slots, as in a PBS node file)")
    p.add_argument("--host-timeout", type=float, default=HOST_TIMEOUT_S, metavar="S",
                   help=f"seconds a host may take to answer before a restart (default {HOST_TIMEOUT_S:g})")
    p.add_argument("--launcher", choices=["auto", "mpiexec", "srun"], default="auto",
                   help="auto: srun inside a Slurm allocation, else mpiexec beside this Python")
    p.add_argument("job", nargs=argparse.REMAINDER, metavar="-- train CONFIG ...",
                   help="the distnet command to supervise, after --")


def job_config(job):
    """The resolved config of ``distnet train ...`` (the checkpoint folder and metrics file are needed here)."""
    from .training import cli as train_cli

    if not job or job[0] != "train":
        raise UserError("distnet run supervises a training job: distnet run -n 2 -- train CONFIG [options]")
    p = argparse.ArgumentParser(prog="distnet train", exit_on_error=False)
    train_cli.add_arguments(p)
    check_sets(job)
    try:
        args, extra = p.parse_known_args(job[1:])
    except (argparse.ArgumentError, SystemExit) as e:
        raise UserError(f"distnet run: the job's arguments: {e}") from None
    if extra:
        raise UserError(f"distnet run: the job's arguments: {unrecognized(p, extra)}")
    return train_cli.resolve(args)


# -- hosts ---------------------------------------------------------------------------------------------------

def expand_nodelist(text):
    """Slurm's compressed host list (``SLURM_JOB_NODELIST``) as names: ``h[1-3],gpu[08-09]a,x`` gives h1, h2,
    h3, gpu08a, gpu09a, x (zero padding kept; several bracket groups in one name multiply out)."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(text + ","):
        depth += {"[": 1, "]": -1}.get(c, 0)
        if c == "," and depth == 0:
            if text[start:i]:
                items.append(text[start:i])
            start = i + 1
    names = []
    for item in items:
        m = re.match(r"^([^\[]*)\[([^\]]*)\](.*)$", item)
        if not m:
            names.append(item)
            continue
        head, ranges, tail = m.groups()
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            width = len(lo)
            for k in range(int(lo), int(hi or lo) + 1):
                names += expand_nodelist(f"{head}{k:0{width}d}{tail}")
    return names


def slurm_tasks_per_node(text, count):
    """``SLURM_TASKS_PER_NODE`` (``2(x3),1``) as a list of ``count`` numbers, or None when it does not fit."""
    out = []
    for part in filter(None, (text or "").split(",")):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part)
        if not m:
            return None
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return out if len(out) == count else None


def parse_hosts(entries, where):
    """[(host, slots or None)] from HOST / HOST:SLOTS entries; a host given again adds up (1 slot each time
    when no slots are written, as a PBS node file lists a host once per core)."""
    order, slots, counted = [], {}, {}
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        m = re.fullmatch(r"([^\s:]+)(?:\s*:\s*(\d+)|\s+slots\s*=\s*(\d+))?(?:\s+.*)?", entry)
        if not m:
            raise UserError(f"distnet run: {where}: {entry!r} is not HOST, HOST:SLOTS or HOST slots=SLOTS")
        host, n = m.group(1), m.group(2) or m.group(3)
        if n is not None and int(n) < 1:
            raise UserError(f"distnet run: {where}: {entry!r}: a host needs at least 1 slot")
        if host not in slots:
            order.append(host)
            slots[host], counted[host] = 0, 0
        slots[host] += int(n) if n is not None else 1
        counted[host] += n is None
    explicit = any(slots[h] != counted[h] for h in order) or any(counted[h] > 1 for h in order)
    return [(h, slots[h] if explicit else None) for h in order]


@dataclass
class Host:
    name: str
    slots: int


def job_hosts(args, kind):
    """The hosts of the job with their ranks ([Host]), or None (no hosts: ranks on this machine, as mpiexec
    places them); sets ``args.ranks``."""
    if args.hosts and args.hostfile:
        raise UserError("distnet run: give the hosts once: --hosts or --hostfile, not both")
    if args.hosts:
        found = parse_hosts(args.hosts.split(","), "--hosts")
    elif args.hostfile:
        path = Path(args.hostfile)
        try:
            lines = [line.split("#", 1)[0] for line in path.read_text().splitlines()]
        except OSError as e:
            raise UserError(f"distnet run: --hostfile {path}: {os.strerror(e.errno) if e.errno else e}: "
                            "give a file with one host a line") from None
        found = parse_hosts(lines, f"--hostfile {path}")
    elif kind == "srun" and os.environ.get("SLURM_JOB_NODELIST"):
        names = expand_nodelist(os.environ["SLURM_JOB_NODELIST"])
        per = None if args.ranks else slurm_tasks_per_node(os.environ.get("SLURM_TASKS_PER_NODE"), len(names))
        found = [(h, per[i] if per else None) for i, h in enumerate(names)]
    else:
        args.ranks = args.ranks or 1
        return None
    if not found:
        raise UserError("distnet run: no hosts given: --hosts h1,h2 or a --hostfile with one host a line")
    if args.ranks_on_restart is not None:
        raise UserError("distnet run: --ranks-on-restart is for a job without hosts: with hosts a restart runs on "
                        "those that answer, each with its ranks (--min-ranks bounds it)")
    if all(n is not None for _, n in found):
        total = sum(n for _, n in found)
        if args.ranks is not None and args.ranks != total:
            raise UserError(f"distnet run: -n {args.ranks}, but the hosts' slots add up to {total}: leave -n out, "
                            "or give the slots that add up to it")
        args.ranks = total
        return [Host(h, n) for h, n in found]
    ranks = args.ranks or len(found)
    if ranks % len(found):
        raise UserError(f"distnet run: -n {ranks} ranks do not divide over {len(found)} hosts: give a multiple of "
                        f"{len(found)}, or slots per host (h1:2,h2:1)")
    args.ranks = ranks
    return [Host(h, ranks // len(found)) for h, _ in found]


# -- launchers -----------------------------------------------------------------------------------------------

def resolve_kind(kind):
    if kind == "auto":
        return "srun" if os.environ.get("SLURM_JOB_ID") and shutil.which("srun") else "mpiexec"
    return kind


def find_mpiexec():
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if not found:
        raise UserError("distnet run: no mpiexec beside this Python or on PATH: install the 'mpich' extra")
    return found


def mpiexec_flavour(mpiexec):
    """"openmpi" for Open MPI's mpiexec/mpirun (-H, -np), else "hydra" (MPICH's, Intel MPI's: -hosts, -n)."""
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30)
        text = out.stdout + out.stderr
    except (OSError, subprocess.TimeoutExpired):
        text = ""
    return "openmpi" if ("Open MPI" in text or "OpenRTE" in text) else "hydra"


class Launcher:
    """How to start the job (on hosts or not) and how to ask a host whether it answers."""

    def __init__(self, kind):
        self.kind = resolve_kind(kind)
        self.env = {}
        if self.kind == "srun":
            from .sweep.launch import srun_mpi

            self.mpi = srun_mpi()
            if self.mpi == "pmi2":  # MPICH under Slurm's PMI-2: its ofi network module (cluster/slurm.sbatch)
                self.env["MPIR_CVAR_CH4_NETMOD"] = os.environ.get("MPIR_CVAR_CH4_NETMOD", "ofi")
        else:
            self.mpiexec = find_mpiexec()
            self._flavour = None

    @property
    def flavour(self):
        if self._flavour is None:
            self._flavour = mpiexec_flavour(self.mpiexec)
        return self._flavour

    def job(self, ranks, hosts):
        """The command line before ``python -m distnet train ...``."""
        if self.kind == "srun":
            mpi = [f"--mpi={self.mpi}"] if self.mpi != "default" else []
            # a rank that dies ends the step: the others would only wait for it (until the stall watchdog)
            cmd = ["srun", "-n", str(ranks), "--kill-on-bad-exit=1", *mpi]
            if hosts and len({h.slots for h in hosts}) == 1:
                cmd += ["-N", str(len(hosts)), "-w", ",".join(h.name for h in hosts),
                        f"--ntasks-per-node={hosts[0].slots}"]
            elif hosts:  # each host its own count: one name per rank, in order
                cmd += ["-N", str(len(hosts)), "--distribution=arbitrary",
                        "-w", ",".join(h.name for h in hosts for _ in range(h.slots))]
            return cmd
        if not hosts:
            return [self.mpiexec, "-n", str(ranks)]
        spec = ",".join(f"{h.name}:{h.slots}" for h in hosts)
        if self.flavour == "openmpi":
            return [self.mpiexec, "-H", spec, "-np", str(ranks)]
        return [self.mpiexec, "-hosts", spec, "-n", str(ranks)]

    def probe(self, host):
        """The command that answers if ``host`` does."""
        if self.kind == "srun":
            return ["srun", "-N", "1", "-n", "1", "-w", host, "--overlap", "true"]
        if self.flavour == "openmpi":
            return [self.mpiexec, "-H", host, "-np", "1", "hostname"]
        return [self.mpiexec, "-hosts", host, "-n", "1", "hostname"]

    def answering(self, hosts, timeout):
        """{host: None if it answered, else why not}; every host asked at once, each within ``timeout``."""
        procs = {}
        for h in hosts:
            cmd = self.probe(h.name)
            try:
                procs[h.name] = (cmd, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                                       stdin=subprocess.DEVNULL, text=True, start_new_session=True,
                                                       env={**os.environ, **self.env}))
            except OSError as e:
                procs[h.name] = (cmd, e)
        end, out = time.monotonic() + timeout, {}
        for name, (cmd, proc) in procs.items():
            if isinstance(proc, OSError):
                out[name] = f"{cmd[0]}: {proc.strerror}"
                continue
            try:
                _, err = proc.communicate(timeout=max(0.0, end - time.monotonic()))
                lines = [t for t in err.splitlines() if t.strip()]
                out[name] = None if proc.returncode == 0 else \
                    f"{' '.join(cmd)}: exit {proc.returncode}" + (f": {lines[-1].strip()}" if lines else "")
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                out[name] = f"no answer to {' '.join(cmd)} within {timeout:g} s"
        return out


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def launcher(kind, ranks):
    """The command line that starts ``ranks`` processes on this machine's launcher (no hosts)."""
    return Launcher(kind).job(ranks, None)


# -- the supervisor ------------------------------------------------------------------------------------------

def _names(hosts):
    return ", ".join(h if isinstance(h, str) else h.name for h in hosts)


class Supervisor:
    def __init__(self, args, cfg, launch, hosts):
        self.args, self.cfg, self.launch, self.hosts = args, cfg, launch, hosts
        self.child = None
        self.signalled = None  # the signal that ended the supervision (passed on to the job)

    def _forward(self, signum, frame):
        self.signalled = signal.Signals(signum).name
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def start(self, ranks, attempt, resume):
        cmd = [*self.launch.job(ranks, self.hosts), sys.executable, "-m", "distnet", *self.args.job,
               *(["--resume"] if resume else [])]
        env = dict(os.environ, DISTNET_ATTEMPT=str(attempt), **self.launch.env)
        self.child = subprocess.Popen(cmd, env=env, start_new_session=True)
        return self.child.wait()

    def say(self, text):
        print(f"distnet run: {text}", file=sys.stderr, flush=True)

    def restart_line(self, attempt, reason, ranks, path, dropped):
        """The restart as a metrics line (appended to the job's metrics file) and a line on stderr."""
        from .metrics import MetricsWriter

        step = int(path.stem.split("-")[-1]) if path else 0  # ckpt-<global step>.h5
        where = f"from {path} (step {step})" if path else "from the start (no checkpoint yet)"
        on = ""
        if self.hosts is not None:
            on = f" on {_names(self.hosts)}" + (f" (dropped {_names(dropped)})" if dropped else "")
        self.say(f"restart {attempt} of {self.args.max_restarts} on {ranks} rank(s){on} {where}")
        fields = {"hosts": [h.name for h in self.hosts], "dropped": list(dropped)} if self.hosts is not None else {}
        metrics = MetricsWriter(self.cfg["log"]["metrics"] or None, append=True)
        metrics.write("restart", step, attempt=attempt, reason=reason, ranks=ranks,
                      from_checkpoint=str(path) if path else None, **fields)
        metrics.close()

    def batch_fits(self, ranks):
        """None when the global batch divides by ``ranks`` x the micro-steps (or is grown by the run: the
        checkpoint knows), else what does not fit."""
        batch, k = self.cfg["train"]["batch_size"], self.cfg["train"]["accumulate"]
        if not isinstance(batch, int) or batch % (ranks * k) == 0:
            return None
        return f"the global batch {batch} does not divide by {ranks} rank(s)" + (f" x {k} micro-steps" if k > 1
                                                                                 else "")

    def warn_batch(self, min_ranks):
        """At the start: the rank counts a restart on fewer hosts may need that the global batch does not
        divide (equal slots per host only)."""
        if not self.hosts or len({h.slots for h in self.hosts}) != 1:
            return
        per = self.hosts[0].slots
        bad = [k * per for k in range(len(self.hosts) - 1, 0, -1)
               if k * per >= min_ranks and self.batch_fits(k * per)]
        if bad:
            self.say(f"warning: {self.batch_fits(bad[0])}: a restart on fewer hosts could not run on "
                     f"{', '.join(map(str, bad))} rank(s) ({BATCH_FIX})")

    def run(self):
        a, folder = self.args, self.cfg["checkpoint"]["dir"]
        ranks, attempt, resume = a.ranks, 0, False
        min_ranks = a.min_ranks or a.ranks
        for s in SIGNALS:
            signal.signal(s, self._forward)
        self.warn_batch(min_ranks)
        while True:
            code = self.start(ranks, attempt, resume)
            if code in FINAL or self.signalled:
                return code
            reason = (f"the job failed (exit {code})" if code > 0
                      else f"the job was killed ({signal.Signals(-code).name})")
            if attempt >= a.max_restarts:
                self.say(f"{reason}; no restarts left (--max-restarts {a.max_restarts})")
                return code
            attempt += 1
            wait = a.backoff * 2 ** (attempt - 1)
            self.say(f"{reason}; restarting in {wait:g} s" + (" on the hosts that answer then"
                                                               if self.hosts is not None else ""))
            time.sleep(wait)
            if self.signalled:
                return code
            dropped = {}
            if self.hosts is not None:
                answers = self.launch.answering(self.hosts, a.host_timeout)
                dropped = {h: why for h, why in answers.items() if why}
                for h, why in dropped.items():
                    self.say(f"host {h} does not answer ({why})")
                if self.signalled:
                    return code
                left = [h for h in self.hosts if h.name not in dropped]
                ranks = sum(h.slots for h in left)
                if ranks < min_ranks:
                    self.say(f"{reason}; only {ranks} rank(s) on the hosts that answer ({_names(left) or 'none'}; "
                             f"dropped {_names(dropped)}), fewer than --min-ranks {min_ranks}: not restarting")
                    return code
                self.hosts = left
            else:
                ranks = a.ranks_on_restart or ranks
                if ranks < min_ranks:
                    self.say(f"{reason}; only {ranks} rank(s) available, fewer than --min-ranks {min_ranks}: "
                             "not restarting")
                    return code
            misfit = self.batch_fits(ranks)
            if misfit:
                self.say(f"{reason}; not restarting: {misfit} ({BATCH_FIX})")
                return code
            path = _newest(folder)
            resume = path is not None and "--resume" not in a.job
            self.restart_line(attempt, reason, ranks, path, dropped)


def _newest(folder):
    """The checkpoint a restart resumes from: the newest valid one (a job killed while writing may leave a
    damaged newest file, which ``--resume`` passes over the same way)."""
    return ckpt.latest_valid(folder)[0] if folder else None


def check_args(args):
    """Every check of the command line before any work: the counts, and the job's config (returned)."""
    if args.job[:1] == ["--"]:
        args.job = args.job[1:]
    for flag, value in (("-n", args.ranks), ("--ranks-on-restart", args.ranks_on_restart),
                        ("--min-ranks", args.min_ranks)):
        if value is not None and value < 1:
            raise UserError(f"distnet run: {flag} must be at least 1, got {value}")
    if args.max_restarts < 0 or not 0 <= args.backoff <= 3600:  # NaN is not in range either
        raise UserError(f"distnet run: --max-restarts must be >= 0 and --backoff in [0, 3600] seconds, got "
                        f"{args.max_restarts} and {args.backoff}")
    if not 0 < args.host_timeout <= 3600:
        raise UserError(f"distnet run: --host-timeout must be in (0, 3600] seconds, got {args.host_timeout}")
    return job_config(args.job)


def run(args):
    cfg = check_args(args)
    hosts = job_hosts(args, resolve_kind(args.launcher))
    launch = Launcher(args.launcher)
    if args.min_ranks is not None and args.min_ranks > args.ranks:
        raise UserError(f"distnet run: --min-ranks {args.min_ranks} is more than the job's {args.ranks} rank(s)")
    misfit = Supervisor(args, cfg, launch, hosts).batch_fits(args.ranks)
    if misfit:  # train would say so too, but only after the launcher started every rank
        raise UserError(f"distnet run: {misfit}: give a --batch-size that {args.ranks} divides")
    if args.max_restarts and not cfg["checkpoint"]["dir"]:
        print("distnet run: warning: no checkpoint folder (--checkpoint-dir DIR): a restart starts from step 0",
              file=sys.stderr, flush=True)
    return Supervisor(args, cfg, launch, hosts).run()
