"""One rule for every command stopped by a signal: SIGINT (Ctrl-C), SIGTERM (a batch system's stop, ``scancel``,
a time limit, preemption) and SIGUSR1 (Slurm's ``--signal``) stop it cleanly, with one line ``distnet: stopped
by SIGTERM ...`` and exit code 3 (``EXIT_STOPPED``: not finished; run the same command again).

Training stops at the next step boundary with a checkpoint (``training/observers/signals.py``, its own handlers).
Every other command runs inside ``stoppable()`` (``distnet.cli.main`` puts it around each command): there a
stop signal raises ``Interrupted`` (a ``KeyboardInterrupt``, so that what cleans up after Ctrl-C cleans up after
SIGTERM too) wherever the command is. Writers already leave nothing half-written on an exception: a temporary
file or folder renamed into place at the end, removed in ``finally``/``except BaseException``. Where a few
steps must not be cut apart (two renames that replace a folder), ``deferred()`` holds a signal back until its
block ends. A command started under MPI calls ``stoppable()`` again after the MPI start (MPICH installs its own
SIGUSR1 handler there); ``comm.run_on_every_rank`` turns ``Interrupted`` into exit 3 on every rank.

A new command (``distnet data import``, say) needs nothing more than to write its outputs that way.
"""

import signal
import sys
from contextlib import contextmanager

EXIT_STOPPED = 3  # not finished, resumable: docs/guide/checkpoints.md, "Exit codes" (every command, training too)
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived (``name``: "SIGTERM", ...)."""

    def __init__(self, name="SIGINT"):
        super().__init__(name)
        self.name = name


def name_of(error):
    """The signal's name of an ``Interrupted`` (a plain KeyboardInterrupt is Ctrl-C's SIGINT)."""
    return getattr(error, "name", "SIGINT")


_held = []  # signals that arrived inside deferred() or in code that would swallow the exception, oldest first
_depth = [0]  # how many deferred() blocks are open
RETRY_S = 0.01  # a signal held back from code that swallows exceptions is raised again this much later
_alarm = {}  # SIGALRM's handler before a retry took it ("previous"), given back when stoppable() ends


def _swallows(frame):
    """Whether an exception raised in ``frame`` would be lost: Python only prints ("Exception ignored in")
    what a weak reference's callback or a ``__del__`` raises, and the garbage collector runs those anywhere
    (h5py's objects have them)."""
    code = frame.f_code if frame is not None else None
    return code is not None and (code.co_name == "__del__" or code.co_filename.endswith(("weakref.py",
                                                                                           "_weakrefset.py")))


def _raise(signum, frame):
    if signum != signal.SIGALRM:
        _held.append(signal.Signals(signum).name)
    if not _held:
        return
    if _depth[0]:
        return  # deferred() raises it at its end
    if _swallows(frame):
        _alarm.setdefault("previous", signal.signal(signal.SIGALRM, _raise))  # again once out of there
        signal.setitimer(signal.ITIMER_REAL, RETRY_S)
        return
    name = _held[0]
    _held.clear()
    raise Interrupted(name)


@contextmanager
def stoppable():
    """Within, SIGINT, SIGTERM and SIGUSR1 raise ``Interrupted``; the earlier handlers come back after. A no-op
    outside the main thread (signals are delivered there only)."""
    try:
        previous = {s: signal.signal(s, _raise) for s in SIGNALS}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if "previous" in _alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, _alarm.pop("previous"))


@contextmanager
def deferred():
    """Within, a stop signal (under ``stoppable``) waits: ``Interrupted`` is raised when the block has ended, so
    that the steps inside happen all or not at all."""
    _depth[0] += 1
    try:
        yield
    finally:
        _depth[0] -= 1
        if not _depth[0] and _held:
            name = _held[0]
            _held.clear()
            raise Interrupted(name)


def stopped_line(error, what=""):
    """Print the one line of a command stopped by a signal; returns ``EXIT_STOPPED``."""
    print(f"distnet: stopped by {name_of(error)}" + (f"; {what}" if what else ""), file=sys.stderr, flush=True)
    return EXIT_STOPPED
