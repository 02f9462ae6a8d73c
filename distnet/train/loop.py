"""The data-parallel training loop, readable at a glance.

One process:             distnet train fashion-mlp
Several on one machine:  mpiexec -n 4 distnet train fashion-mlp      (or launch/local.sh 4 fashion-mlp)
Several machines:        srun --mpi=pmi2 distnet train fashion-mlp    (see cluster/README.md)

Every rank builds the same model from the seed, reads its contiguous part of each global batch, computes
gradients, and the ranks sum them with MPI (a gradient-sync strategy, by default in buckets overlapped with
backward) before all take the same optimizer step. Rank 0 alone logs, writes metrics and checkpoints.
"""

import time
from dataclasses import dataclass

from .. import comm
from .observers import Checkpoints, EarlyStop, Evaluation, FaultInjector, Log
from .profile import StepTimer
from .run import check_same_data, resume, setup
from .step import step


def loop(run, observers):
    """Steps until the run is done, telling the observers (see ``observers``) what happens."""
    for o in observers:
        o.on_start(run)
    while not run.done():
        batches = run.batches()
        try:
            for x, y, index in batches:
                for o in observers:
                    o.on_batch(run, x, y)
                stats = step(run, x, y, index)
                run.pos.global_step += 1
                run.pos.step_in_epoch += 1
                run.samples += run.batch
                for o in observers:
                    o.on_step(run, stats)
                if run.done():
                    break
        finally:
            batches.close()
        if run.pos.step_in_epoch == run.steps_per_epoch:
            run.pos.epoch += 1
            run.pos.step_in_epoch = 0
            for o in observers:
                o.on_epoch_end(run)
    for o in observers:
        o.on_end(run)


@dataclass
class Result:
    """What ``train`` measured: the summary (as in the metrics) and, when profiled, every rank's per-step
    phases (``StepTimer.timings()``)."""

    summary: dict
    timings: dict = None
    run: object = None  # the finished run (its model, steps per epoch, ...)


def observers_for(run, about=None):
    """The standard observers of ``distnet train``, in the order they must hear of each event."""
    lc, tc = run.cfg["log"], run.cfg["train"]
    timer = StepTimer(run.world, enabled=lc["profile"], trace_path=lc["trace"] or None) \
        if lc["profile"] or lc["trace"] else None
    log = Log(run, timer=timer, about=about)
    checkpoints = Checkpoints(run)
    chain = [FaultInjector.from_env(run.world.rank), *([timer] if timer else []), log, Evaluation(run, log)]
    if run.val_split is not None and tc["patience"]:
        chain.append(EarlyStop(run, checkpoints, log))
    return chain + [checkpoints]


def train(cfg, blas_threads=None, observers=()):
    """Run training as ``cfg`` says (every command-line flag is already in it), with ``observers`` after the
    standard ones; returns a ``Result``."""
    w = comm.world()
    t_start = time.perf_counter()
    about = {"mpi_library": w.library(), "hosts": comm.hosts(w), "blas_threads": w.allgather(blas_threads)}
    with comm.agreed(w):  # any rank may fail here alone; then all stop with one message
        run = setup(cfg, w)
        if cfg["checkpoint"]["resume"]:
            about["resumed_from"] = str(resume(run))
    check_same_data(run, about["hosts"])
    comm.check_replicas(w, run.model, "at the start")
    observers = observers_for(run, about) + list(observers)
    try:
        loop(run, observers)
    finally:
        run.close()
    comm.average_buffers(w, run.model)
    comm.check_replicas(w, run.model, "at the end")
    best = run.pos.best_metric if run.pos.best_metric >= 0 else None  # None: no evaluation ran
    summary = dict(wall_s=time.perf_counter() - t_start, samples=run.samples, best_accuracy=best, ranks=w.size,
                   global_batch=run.batch, epochs=run.pos.epoch, steps=run.pos.global_step,
                   early_stopped=run.stop == "early stop", param_hash=run.model.param_hash()[:16],
                   last_accuracy=run.last_eval)
    timer = next((o for o in observers if isinstance(o, StepTimer)), None)
    timings = None
    if timer is not None:
        timings = timer.timings()
        summary.update(timer.totals(timings))
        timer.write_trace()
    next(o for o in observers if isinstance(o, Log)).summary(run, summary)
    return Result(summary, timings, run)
