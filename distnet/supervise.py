"""``distnet run -n N [options] -- train CONFIG ...``: start a training job and restart it when it fails.

The supervisor starts the job with the launcher (mpiexec beside this Python, or srun inside a Slurm
allocation) and waits. When the job fails with anything but a user error (exit 2) or a stop on a signal
(exit 3, ``EXIT_STOPPED``), it starts it again with ``--resume`` from the newest checkpoint, up to
``--max-restarts`` times, waiting ``--backoff`` seconds before the first restart and twice as long before each
next one (as torchrun does). A restart may use fewer ranks (``--ranks-on-restart``, e.g. after losing a
host), never fewer than ``--min-ranks``; resuming on another rank count follows the same sample order.

Each restart is a line in the job's metrics (``{"event": "restart", "attempt": k, "reason": ...,
"from_checkpoint": ...}``) and on stderr. The job sees its attempt number in ``DISTNET_ATTEMPT`` (0 first):
fault injection (``DISTNET_FAULT``) fires on attempt 0 only. SIGINT, SIGTERM and SIGUSR1 sent to the
supervisor are passed on to the job (which then stops gracefully) and end the supervision: a job stopped on
purpose is not restarted. The job runs in its own session, so a Ctrl-C on the terminal reaches it once,
through the supervisor.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import checkpoint as ckpt
from .cli import check_sets, unrecognized
from .errors import UserError
from .train.observers.signals import EXIT_STOPPED, SIGNALS

FINAL = {0: "finished", 2: "a user error", EXIT_STOPPED: "stopped by a signal"}  # exit codes never restarted


def add_arguments(p):
    p.add_argument("-n", "--ranks", type=int, default=1, metavar="N", help="ranks to start (default 1)")
    p.add_argument("--max-restarts", type=int, default=3, metavar="K", help="restarts at most (default 3)")
    p.add_argument("--backoff", type=float, default=1.0, metavar="S",
                   help="seconds before the first restart, doubled before each next (default 1)")
    p.add_argument("--ranks-on-restart", type=int, metavar="R",
                   help="ranks for restarts (default: N): fewer when a host is gone")
    p.add_argument("--min-ranks", type=int, metavar="M", help="never restart on fewer ranks (default: N)")
    p.add_argument("--launcher", choices=["auto", "mpiexec", "srun"], default="auto",
                   help="auto: srun inside a Slurm allocation, else mpiexec beside this Python")
    p.add_argument("job", nargs=argparse.REMAINDER, metavar="-- train CONFIG ...",
                   help="the distnet command to supervise, after --")


def job_config(job):
    """The resolved config of ``distnet train ...`` (the checkpoint folder and metrics file are needed here)."""
    from .train import cli as train_cli

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


def launcher(kind, ranks):
    """The command line that starts ``ranks`` processes."""
    if kind == "auto":
        kind = "srun" if os.environ.get("SLURM_JOB_ID") and shutil.which("srun") else "mpiexec"
    if kind == "srun":
        mpi = os.environ.get("DISTNET_SRUN_MPI", "pmi2")
        return ["srun", "-n", str(ranks), *([f"--mpi={mpi}"] if mpi != "default" else [])]
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if not found:
        raise UserError("distnet run: no mpiexec beside this Python or on PATH: install the 'mpich' extra")
    return [found, "-n", str(ranks)]


class Supervisor:
    def __init__(self, args, cfg):
        self.args, self.cfg = args, cfg
        self.child = None
        self.signalled = None  # the signal that ended the supervision (passed on to the job)

    def _forward(self, signum, frame):
        self.signalled = signal.Signals(signum).name
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def start(self, ranks, attempt, resume):
        cmd = [*launcher(self.args.launcher, ranks), sys.executable, "-m", "distnet", *self.args.job,
               *(["--resume"] if resume else [])]
        env = dict(os.environ, DISTNET_ATTEMPT=str(attempt))
        self.child = subprocess.Popen(cmd, env=env, start_new_session=True)
        return self.child.wait()

    def restart_line(self, attempt, reason, ranks, path):
        """The restart as a metrics line (appended to the job's metrics file) and a line on stderr."""
        from .metrics import MetricsWriter

        step = int(path.stem.split("-")[-1]) if path else 0  # ckpt-<global step>.h5
        where = f"from {path} (step {step})" if path else "from the start (no checkpoint yet)"
        print(f"distnet run: {reason}; restart {attempt} of {self.args.max_restarts} on {ranks} rank(s) {where}",
              file=sys.stderr, flush=True)
        metrics = MetricsWriter(self.cfg["log"]["metrics"] or None, append=True)
        metrics.write("restart", step, attempt=attempt, reason=reason, ranks=ranks,
                      from_checkpoint=str(path) if path else None)
        metrics.close()

    def run(self):
        a, folder = self.args, self.cfg["checkpoint"]["dir"]
        ranks, attempt = a.ranks, 0
        resume = False
        for s in SIGNALS:
            signal.signal(s, self._forward)
        while True:
            code = self.start(ranks, attempt, resume)
            if code in FINAL or self.signalled:
                return code
            reason = (f"the job failed (exit {code})" if code > 0
                      else f"the job was killed ({signal.Signals(-code).name})")
            if attempt >= a.max_restarts:
                print(f"distnet run: {reason}; no restarts left (--max-restarts {a.max_restarts})",
                      file=sys.stderr, flush=True)
                return code
            attempt += 1
            ranks = a.ranks_on_restart or ranks
            if ranks < (a.min_ranks or a.ranks):
                print(f"distnet run: {reason}; only {ranks} rank(s) available, fewer than --min-ranks "
                      f"{a.min_ranks or a.ranks}: not restarting", file=sys.stderr, flush=True)
                return code
            path = _newest(folder)
            resume = path is not None and "--resume" not in a.job
            self.restart_line(attempt, reason, ranks, path)
            time.sleep(a.backoff * 2 ** (attempt - 1))
            if self.signalled:
                return code


def _newest(folder):
    """The checkpoint a restart resumes from: the newest valid one (a job killed while writing may leave a
    damaged newest file, which ``--resume`` passes over the same way)."""
    return ckpt.latest_valid(folder)[0] if folder else None


def run(args):
    if args.job[:1] == ["--"]:
        args.job = args.job[1:]
    for flag, value in (("-n", args.ranks), ("--ranks-on-restart", args.ranks_on_restart),
                        ("--min-ranks", args.min_ranks)):
        if value is not None and value < 1:
            raise UserError(f"distnet run: {flag} must be at least 1, got {value}")
    if args.max_restarts < 0 or args.backoff < 0:
        raise UserError("distnet run: --max-restarts and --backoff must be >= 0")
    cfg = job_config(args.job)
    if args.max_restarts and not cfg["checkpoint"]["dir"]:
        print("distnet run: warning: no checkpoint folder (--checkpoint-dir DIR): a restart starts from step 0",
              file=sys.stderr, flush=True)
    return Supervisor(args, cfg).run()
