"""Graceful stop: SIGINT, SIGTERM or SIGUSR1 on any rank (or on mpiexec, which passes them on) ends the run at
the next step boundary, with a checkpoint, one line, and exit code ``EXIT_STOPPED``.

A handler only notes the signal. The rank's vote (``run.stop_vote``) travels with the next step's gradients
(one more float in the statistics already summed there), so every rank learns of it at the same step without
an extra collective; then the ranks gather which signal each had, the run stops (``run.stop``), the
checkpoint observer writes its final checkpoint, and ``train`` ends with ``Stopped``. A second signal on a
rank ends the whole job at once (MPI_Abort, exit 128 + the signal's number), unless it is the same signal
within ``DUPLICATE_S`` of the first: one signal often reaches a rank twice, directly and passed on by a
launcher (Slurm's ``--signal`` without ``B:`` signals the tasks and the batch script, which passes it on
through srun), and that must not cost the checkpoint.

The handlers are installed after MPI's initialization: MPICH installs its own for SIGUSR1 there.
"""

import signal
import sys
import time

from ...comm import Stop
from ...signals import EXIT_STOPPED, SIGNALS
from .base import Observer
from .log import epoch_label

DUPLICATE_S = 1.0  # the same signal again within this many seconds is one signal delivered twice
_received = []  # the signals this process was sent while a Signals observer listened


def received():
    """Whether this process has been sent a stop signal (the test faults' pauses end on it)."""
    return bool(_received)


class Stopped(Stop):
    """The run stopped on a signal; every rank raises it after the final checkpoint (the line is printed)."""

    def __init__(self):
        super().__init__(None, EXIT_STOPPED)


class Signals(Observer):
    def __init__(self, world):
        self.world = world
        self.pending = None  # the first signal this rank received (a name), not yet voted on
        self.first = None  # (signal number, monotonic time) of the first signal this rank received
        self.stopped = None  # (signal name, ranks that received one) once the ranks agreed to stop
        self.previous = {}

    def install(self):
        """Take over the signals (until ``restore``); a signal from now on is voted on at the next step."""
        for s in SIGNALS:
            self.previous[s] = signal.signal(s, self._handle)

    def restore(self):
        """Give the signals back their previous handlers, except the one that stopped the run (if one did): it is
        ignored from then on, since the same signal, passed on to each host separately (srun, mpiexec), may
        reach a rank only after the ranks stopped, where the default action would kill it with another status
        (the job's exit code then no longer says "stopped, resumable")."""
        late = getattr(signal, self.stopped[0]) if self.stopped else None
        for s, handler in self.previous.items():
            signal.signal(s, signal.SIG_IGN if s == late else handler)
        self.previous = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        _received.append(name)
        now = time.monotonic()
        if self.first is None:  # this rank's first signal: a stop, or the stop already agreed on (the signal
            self.first = (signum, now)  # reached another rank first), which is this one's too
            if self.stopped is None:
                self.pending = name
            return
        if self.first[0] == signum and now - self.first[1] < DUPLICATE_S:
            return  # the first one, delivered again
        print(f"distnet: {name} again: stopping at once, without a checkpoint", file=sys.stderr, flush=True)
        self.world.abort(128 + signum)

    def on_batch(self, run, x, y):
        run.stop_vote = 0.0 if self.pending is None else 1.0

    def on_step(self, run, stats):
        if not stats.stop_votes:
            return
        names = self.world.allgather(self.pending)
        ranks = [r for r, name in enumerate(names) if name]
        self.stopped = (names[ranks[0]], ranks)
        run.stop = f"stopped by {self.stopped[0]}"

    def message(self, run, checkpoint):
        """The one line said when the run stopped: where, what was saved, how to go on."""
        name, ranks = self.stopped
        where = f" on rank {ranks[0]}" if run.world.size > 1 and len(ranks) < run.world.size else ""
        saved = f"checkpoint {checkpoint}; continue with --resume" if checkpoint else \
            "nothing was saved (no checkpoint folder: pass --checkpoint-dir DIR to keep such a run)"
        return (f"distnet: stopped by {name}{where} at step {run.pos.global_step} (epoch {epoch_label(run)}); "
                f"{saved}")
