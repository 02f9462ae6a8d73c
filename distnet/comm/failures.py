"""Failure agreement and reporting: one rank failing must never leave the others waiting in a collective.

Two situations:
- work any rank may fail on its own *between* collectives (opening files, building the model): run it
  inside ``agreed(w)``, after which every rank knows whether any failed, and all stop with one message;
- a failure where other ranks may already be *inside* a collective (the training step): ``fail_alone``
  reports it and aborts the whole job (MPI_Abort), since the others can no longer be told.
``run_on_every_rank`` wraps a command's body to turn either into an exit code.
"""

import sys
from contextlib import contextmanager

from ..errors import UserError


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
    message to the list ``detail`` when given. One line is printed, by the first rank that failed: without a rank prefix when every rank failed alike (a bad config or dataset is the
    same everywhere), with it when the ranks disagree.
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


def fail_alone(w, error):
    """This rank failed where the others may be inside a collective: report and end the whole job."""
    report(w, error)
    code = getattr(error, "exit_code", 1)
    if w.size > 1:
        w.abort(code)  # MPI_Abort: the launcher ends every rank and exits with this code
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
    except BaseException as e:  # noqa: BLE001 - one rank failing must end all ranks
        return fail_alone(w, e)
