"""The data-parallel training loop, readable at a glance.

One process:             distnet train fashion-mlp
Several on one machine:  mpiexec -n 4 distnet train fashion-mlp      (or launch/local.sh 4 fashion-mlp)
Several machines:        srun --mpi=pmi2 distnet train fashion-mlp    (see cluster/README.md)

Every rank builds the same model from the seed, reads its contiguous part of each global batch, computes
gradients, and the ranks sum them with MPI (a gradient-sync strategy, by default in buckets overlapped with
backward) before all take the same optimizer step. Rank 0 alone logs, writes metrics and checkpoints.
"""

import sys
import time
from dataclasses import dataclass

from .. import checkpoint as ckpt
from .. import comm
from .observers import AutoBatch, Checkpoints, EarlyStop, Evaluation, FaultInjector, Log, Target
from .observers.signals import Signals, Stopped
from .profile import StepTimer
from .run import check_same_data, init_from, resume, setup
from .step import step


def tell(run, observers, event, *args):
    """Tell every observer of an event. Their waits are not the step's: the watchdog bounds them by the
    longer ``comm.stall_io_abort_s``, since evaluation and checkpoints take as long as their file system does.
    (Work that one rank does alone, such as rank 0 writing a checkpoint, ends in a collective inside the
    observer, so the others wait for it here rather than in the next step.)"""
    with run.world.in_phase("eval/checkpoint"):
        for o in observers:
            getattr(o, event)(run, *args)


def loop(run, observers):
    """Steps until the run is done, telling the observers (see ``observers``) what happens."""
    w = run.world
    tell(run, observers, "on_start")
    while not run.done():
        batches = run.batches()
        try:
            for x, y, index in batches:
                tell(run, observers, "on_batch", x, y)
                w.step, w.phase = run.pos.global_step, "step"
                stats = step(run, x, y, index)
                run.pos.global_step += 1
                run.pos.step_in_epoch += 1
                run.samples += run.batch
                tell(run, observers, "on_step", stats)
                if run.done():
                    break
        finally:
            batches.close()
        if run.pos.step_in_epoch == run.steps_per_epoch:
            run.pos.epoch += 1
            run.pos.step_in_epoch = 0
            tell(run, observers, "on_epoch_end")
    tell(run, observers, "on_end")


@dataclass
class Result:
    """What ``train`` measured: the summary (as in the metrics) and, when profiled, every rank's per-step
    phases (``StepTimer.timings()``)."""

    summary: dict
    timings: dict = None
    run: object = None  # the finished run (its model, steps per epoch, ...)


def observers_for(run, about=None, signals=None, more=()):
    """The standard observers of ``distnet train``, in the order they must hear of each event, then ``more``
    (the caller's own); every one of them may add fields to the train lines (``Observer.on_train_line``)."""
    lc, tc = run.cfg["log"], run.cfg["train"]
    timer = StepTimer(run.world, enabled=lc["profile"], trace_path=lc["trace"] or None) \
        if lc["profile"] or lc["trace"] else None
    log = Log(run, about=about)
    checkpoints = Checkpoints(run)
    chain = [FaultInjector.from_env(run.world.rank), *([signals] if signals else []), *([timer] if timer else []),
             log, Evaluation(run, log)]
    if tc["target"]:
        chain.append(Target(run, log))
    if run.val_split is not None and tc["patience"]:
        chain.append(EarlyStop(run, checkpoints, log))
    if run.auto:
        chain.append(AutoBatch(run, log))  # before checkpoints: an epoch-end checkpoint holds the new batch
    log.observers = chain = [*chain, checkpoints, *more]
    return [*chain, log.closer]  # last: the train line, once every observer heard of the step


def train(cfg, blas_threads=None, observers=()):
    """Run training as ``cfg`` says (every command-line flag is already in it), with ``observers`` after the
    standard ones; returns a ``Result``."""
    w = comm.world()
    cc = cfg["comm"]
    w.watch(cc["stall_warn_s"], cc["stall_abort_s"], cc["stall_io_abort_s"])
    w.wait_mode(cc["wait"])
    signals = Signals(w)  # after MPI's start (MPICH takes SIGUSR1 there); a signal from now on stops cleanly
    signals.install()
    try:
        return _train(w, cfg, blas_threads, observers, signals)
    finally:
        signals.restore()
        w.phase = "end"


def _train(w, cfg, blas_threads, observers, signals):
    t_start = time.perf_counter()
    w.phase = "setup"
    about = {"mpi_library": w.library(), "hosts": comm.hosts(w), "blas_threads": w.allgather(blas_threads)}
    with comm.agreed(w):  # any rank may fail here alone; then all stop with one message
        run = setup(cfg, w)
        if cfg["checkpoint"]["resume"]:
            about["resumed_from"] = str(resume(run))
        elif cfg["train"]["init_from"]:
            about["initialized_from"] = str(init_from(run))
    check_same_data(run, about["hosts"])
    comm.sync.attach(w, run.sync)  # what the strategy needs of the other ranks (shared memory), now all set up
    comm.check_replicas(w, run.model, "at the start")
    observers = observers_for(run, about, signals, observers)
    try:
        loop(run, observers)
    finally:
        run.close()
    w.phase = "end"
    if signals.stopped:
        folder = cfg["checkpoint"]["dir"]
        saved = ckpt.checkpoint_path(folder, run.pos.global_step) if folder else None
        line = signals.message(run, saved)
        metrics = next(o for o in observers if isinstance(o, Log)).metrics
        metrics.write("stop", run.pos.global_step, signal=signals.stopped[0], ranks=signals.stopped[1],
                      checkpoint=str(saved) if saved else None)
        metrics.close()
        if w.rank == 0:
            print(line, file=sys.stderr, flush=True)
        raise Stopped()
    comm.average_buffers(w, run.model)
    comm.check_replicas(w, run.model, "at the end")
    best = run.pos.best_metric if run.pos.best_metric >= 0 else None  # None: no evaluation ran
    summary = dict(wall_s=time.perf_counter() - t_start, samples=run.samples, best_accuracy=best, ranks=w.size,
                   global_batch=run.batch, epochs=run.pos.epoch, steps=run.pos.global_step,
                   early_stopped=run.stop == "early stop", target_reached=run.stop == "target",
                   param_hash=run.model.param_hash()[:16], last_accuracy=run.last_eval,
                   off_clock_s=run.paused_s)  # evaluation and checkpoints: wall_s less this is training
    timer = next((o for o in observers if isinstance(o, StepTimer)), None)
    timings = None
    if timer is not None:
        timings = timer.timings()
        summary.update(timer.totals(timings))
        timer.write_trace()
    next(o for o in observers if isinstance(o, Log)).summary(run, summary)
    return Result(summary, timings, run)
