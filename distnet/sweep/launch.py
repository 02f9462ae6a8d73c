"""Running a sweep's points: the launcher, resuming, and the Slurm job-array script.

A point is a real ``distnet train`` process group on its own rank count P, started with ``mpiexec -n P`` (the
one beside this Python, else on PATH), with ``srun -n P`` inside a Slurm allocation (``SLURM_JOB_ID`` set),
optionally behind a prefix such as ``flock -x /tmp/distnet-cpu.lock``. It runs in its own session so that an
interrupted sweep can end all of it (a terminal's Ctrl-C, a batch system's SIGTERM), and in the sweep folder.
"""

import fcntl
import os
import shlex
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from .. import checkpoint as ckpt
from ..comm.world import library_uninitialized
from ..errors import UserError


def mpiexec():
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if not found:
        raise UserError("mpiexec not found beside this Python or on PATH: install the 'mpich' extra "
                        "(pip install -e '.[mpich]') or run inside a Slurm allocation (srun)")
    return found


def srun_mpi():
    """srun's --mpi for the MPI mpi4py loads (as cluster/slurm.sbatch does): DISTNET_SRUN_MPI if set."""
    mpi = os.environ.get("DISTNET_SRUN_MPI", "")
    if not mpi:
        library = library_uninitialized()  # none: the cluster's default
        mpi = "pmix" if "Open MPI" in library else "pmi2" if "MPICH" in library else "default"
    return mpi


def launcher(ranks, prefix=""):
    """(the command line before ``python -m distnet train ...`` for a point on ``ranks`` ranks, the
    environment variables it needs). Under srun with pmi2, MPICH's ofi network module unless the user chose
    one (cluster/slurm.sbatch says why)."""
    pre = shlex.split(prefix)
    if os.environ.get("SLURM_JOB_ID"):
        mpi = srun_mpi()
        env = {"MPIR_CVAR_CH4_NETMOD": os.environ.get("MPIR_CVAR_CH4_NETMOD", "ofi")} if mpi == "pmi2" else {}
        return pre + ["srun", "-n", str(ranks), *([] if mpi == "default" else [f"--mpi={mpi}"])], env
    return pre + [mpiexec(), "-n", str(ranks)], {}


def state(folder, point):
    """"done" (its summary line is written), "partial" (a checkpoint to resume from) or "new"."""
    metrics = Path(folder) / point.name / "metrics.jsonl"
    if metrics.is_file() and '"event": "summary"' in _last_line(metrics):
        return "done"
    if ckpt.latest(Path(folder) / point.name / "ckpt") is not None:
        return "partial"
    return "new"


def _last_line(path):
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 4096))
        lines = f.read().decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else ""


def command(plan, point, folder, prefix=""):
    """(the full command that runs ``point`` now, with --resume when it has a checkpoint; its environment)."""
    resume = ["--resume"] if state(folder, point) == "partial" else []
    pre, env = launcher(point.ranks, prefix)
    return pre + [sys.executable, "-m", "distnet", *point.args, *resume], env


def run_point(plan, point, folder, prefix=""):
    """Run (or resume) one point to its end; returns the exit code. Its output goes to ``log.txt``."""
    folder = Path(folder)
    pdir = folder / point.name
    pdir.mkdir(parents=True, exist_ok=True)
    with _point_lock(pdir, point):
        return _run(plan, point, folder, pdir, prefix)


@contextmanager
def _point_lock(pdir, point):
    """One process at a time runs a point (two sweeps started on one folder, an array task started twice
    would both write its metrics and checkpoints); the lock goes with the process, however it ends."""
    with open(pdir / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"point {point.name} of {pdir.parent} is being run by another process (another "
                            "distnet sweep on this folder?): let it finish or stop it, then run again") from None
        yield


def _run(plan, point, folder, pdir, prefix):
    cmd, env = command(plan, point, folder, prefix)
    if "--resume" not in cmd:
        (pdir / "metrics.jsonl").unlink(missing_ok=True)  # a start that wrote no checkpoint: start afresh
    with open(pdir / "log.txt", "a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **env})
        try:
            return proc.wait()
        except BaseException:
            _end(proc)
            raise


def _end(proc):
    """End a point's whole process group (launcher and ranks): SIGTERM, then SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def last_error(folder, point, lines=3):
    """The end of a point's log, for a message."""
    log = Path(folder) / point.name / "log.txt"
    if not log.is_file():
        return ""
    tail = [t for t in log.read_text(errors="replace").splitlines() if t.strip()][-lines:]
    return "\n".join("    " + t for t in tail)


def slurm_array(plan, folder, prefix=""):
    """Write ``DIR/sweep.sbatch``: one array task per point, each running ``distnet sweep --run-point``
    (srun -n with the point's rank count inside its allocation, resuming from the point's checkpoint when the
    task is run again). The allocation is the largest rank count's."""
    folder = Path(folder)
    n, path = len(plan.points), folder / "sweep.sbatch"
    run = [sys.executable, "-m", "distnet", "sweep", "--run-point", str(folder.resolve()), "$SLURM_ARRAY_TASK_ID"]
    if prefix:
        run += ["--launcher-prefix", prefix]
    line = " ".join(shlex.quote(a) if not a.startswith("$") else f'"{a}"' for a in run)
    text = f"""#!/bin/bash
# sbatch {path}: {n} array tasks, one per point of the sweep in {folder.resolve()}
# ({plan.config}, global batches {', '.join(str(b) for b in sorted({p.batch for p in plan.points}))}).
{_ranks_comment(plan, path)}
# Options given to sbatch override the lines below (e.g. sbatch --time=4:00:00 --array=0-{n - 1}%4).
# When the tasks are done:  distnet sweep --report {folder.resolve()}
#SBATCH --job-name=distnet-sweep
#SBATCH --array=0-{n - 1}
#SBATCH --ntasks={max(plan.ranks)}
#SBATCH --cpus-per-task=1
#SBATCH --time=01:00:00
#SBATCH --output={folder.resolve()}/slurm-%A_%a.out
set -euo pipefail
threads=${{SLURM_CPUS_PER_TASK:-1}}
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
{line}
"""
    tmp = path.with_name(".sweep.sbatch.tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    tmp.replace(path)
    return path


def _ranks_comment(plan, path):
    """The header lines on rank counts: which tasks run on how many ranks, and how to submit each count with
    an allocation of its own size (under the script's --ntasks, the largest, a smaller point leaves ranks idle)."""
    if not plan.several:
        return (f"# Each task runs its point on {plan.ranks[0]} rank(s) with srun, resuming from its checkpoint "
                "if it ran before.")
    out = ["# Each task runs its point with srun -n <its rank count> and resumes from the point's checkpoint if it",
           f"# ran before; the allocation (--ntasks) is the largest count, {max(plan.ranks)}:"]
    for ranks in plan.ranks:
        tasks = _index_ranges([p.index for p in plan.points if p.ranks == ranks])
        out.append(f"#   tasks {tasks}: {ranks} rank(s)  (alone: sbatch --array={tasks} --ntasks={ranks} {path})")
    return "\n".join(out)


def _index_ranges(indices):
    """[0, 1, 2, 5, 6] -> "0-2,5-6" (sbatch --array's form)."""
    out, start = [], None
    for i, x in enumerate(indices):
        if start is None:
            start = x
        if i + 1 == len(indices) or indices[i + 1] != x + 1:
            out.append(f"{start}-{x}" if x > start else str(start))
            start = None
    return ",".join(out)
