"""Failure agreement and reporting: one rank failing must never leave the others waiting in a collective.

Two situations:
- work any rank may fail on its own *between* collectives (opening files, building the model): run it
  inside ``agreed(w)``, after which every rank knows whether any failed, and all stop with one message;
- a failure where other ranks may already be *inside* a collective (the training step): ``fail_alone``
  reports it and aborts the whole job (MPI_Abort), since the others can no longer be told.
``run_on_every_rank`` wraps a command's body to turn either into an exit code.
"""

import os
import signal
import sys
import time
from contextlib import contextmanager

from ..errors import UserError

ABORT_EXIT_S = 5.0  # a rank whose MPI_Abort blocks this long ends itself (SIGALRM, which needs no Python)


class Stop(Exception):
    """Raised on every rank at once after a collective decision; ``message`` is printed by rank 0 (None:
    already reported)."""

    def __init__(self, message, exit_code=1, detail=None):
        super().__init__(message)
        self.exit_code = exit_code
        self.detail = message if detail is None else detail  # what went wrong, also when already reported


def report(w, error, rank_prefix=True):
    """Print this rank's error: one line for a user error, the traceback and a line otherwise."""
    where = f"rank {w.rank}: " if w.size > 1 and rank_prefix else ""
    if isinstance(error, UserError):
        print(f"distnet: error: {where}{error}", file=sys.stderr, flush=True)
    else:
        import traceback

        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
        print(f"distnet: error: {where}{type(error).__name__}: {error}", file=sys.stderr, flush=True)


def settle(w, error, detail=None):
    """Agree collectively on work that any rank may have failed; ``error`` is this rank's exception or None.

    Returns the highest exit code over ranks (0 when all succeeded), and appends the first failed rank's
    message to the list ``detail`` when given. One line is printed, by the first rank that failed: without a
    rank prefix when every rank failed alike (a bad config or dataset is the same everywhere), with it when the
    ranks disagree.
    """
    mine = None if error is None else (getattr(error, "exit_code", 1), str(error))
    everyone = w.allgather(mine)
    failed = [r for r, m in enumerate(everyone) if m is not None]
    if not failed:
        return 0
    if detail is not None:
        detail.append(everyone[failed[0]][1])
    if w.rank == failed[0]:
        alike = len(failed) == w.size and len({everyone[r][1] for r in failed}) == 1
        report(w, error, rank_prefix=not alike)
    return max(everyone[r][0] for r in failed)


@contextmanager
def agreed(w):
    """``with agreed(w): ...`` runs work that any rank may fail alone; on leaving, the ranks agree, and if any
    failed every rank raises ``Stop`` with the highest exit code (reported once, by ``settle``)."""
    error = None
    try:
        yield
    except Exception as e:  # noqa: BLE001 - every rank must hear of it
        error = e
    detail = []
    code = settle(w, error, detail)
    if code:
        raise Stop(None, code, detail[0])


FORWARD_S = 0.5  # abort_job's pause between the last line and MPI_Abort: hydra's abort drops unread output


def abort_job(w, code, exit_s=None):
    """End the whole job with exit ``code`` (MPI_Abort: the launcher ends every rank), and this process in any
    case: a rank cut off from its launcher (its host's link down) may see MPI_Abort return, or block in it
    for as long as TCP retries; it must not linger on its host. After a return it exits at once; a blocked
    one is ended by SIGALRM's default action after ``exit_s`` (no Python code has to run for that). It first
    waits ``FORWARD_S``: MPICH's launcher kills its processes on an abort without reading what is still in their
    output pipes, which lost the error line just printed (seen in CI, for a stall and for one rank's exception)."""
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(FORWARD_S)
    try:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, ABORT_EXIT_S if exit_s is None else exit_s)
    except ValueError:  # not the main thread: no timer, MPI_Abort alone
        pass
    w.abort(code)
    os._exit(code)


def fail_alone(w, error):
    """This rank failed where the others may be inside a collective: report and end the whole job."""
    report(w, error)
    code = getattr(error, "exit_code", 1)
    if w.size > 1:
        abort_job(w, code)  # MPI_Abort: the launcher ends every rank and exits with this code
    return code


def run_on_every_rank(w, body):
    """Call ``body()`` on every rank and turn a failure into an exit code: a Stop (decided collectively) is
    said once, by rank 0; any other exception is one rank failing alone, which ends all ranks."""
    try:
        body()
        return 0
    except Stop as e:
        if e.args[0] and w.rank == 0:
            print(f"distnet: error: {e.args[0]}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt as e:  # a stop signal (distnet.signals): exit 3
        return stopped(w, e)
    except BaseException as e:  # noqa: BLE001 - one rank failing must end all ranks
        return fail_alone(w, e)


LATER_S = 2.0  # a rank other than 0 says it was stopped only this much later (rank 0, also signalled, first)


def stopped(w, error):
    """A stop signal (SIGINT, SIGTERM, SIGUSR1: ``distnet.signals``) interrupted this rank wherever it was, maybe
    inside a collective: one line, ``distnet: stopped by SIGTERM``, and exit 3 for the whole job. A launcher
    passes a signal on to every rank, so rank 0 says it; a rank other than 0 says it (with its rank) only if
    the job is still running ``LATER_S`` later, when rank 0 had none. With several ranks the job ends by
    MPI_Abort(3), since a rank without the signal may be waiting in a collective."""
    from ..signals import EXIT_STOPPED, SIGNALS, name_of

    try:
        for s in SIGNALS:  # the same signal again (passed on by a launcher too) must not cut this short
            signal.signal(s, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass
    if w.size == 1:
        print(f"distnet: stopped by {name_of(error)}", file=sys.stderr, flush=True)
        return EXIT_STOPPED
    if w.rank != 0:
        time.sleep(LATER_S)
    print(f"distnet: stopped by {name_of(error)}" + (f" on rank {w.rank}" if w.rank else ""), file=sys.stderr,
          flush=True)
    abort_job(w, EXIT_STOPPED)  # after FORWARD_S, for the line to reach the launcher
