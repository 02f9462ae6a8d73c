"""Observers: everything a training run does besides training, each on its own cadence.

The loop tells every observer, in list order:
  on_start(run)             before the first step (after setup and resume)
  on_batch(run, x, y)       a batch is ready, before its step
  on_step(run, stats)       after each step, with the step's statistics (``train.step.Stats``)
  on_epoch_end(run)         after an epoch's last step (``run.pos`` already points at the next epoch)
  on_end(run)               after the last step
and, from the ``Log`` observer, whenever it writes a train line (every ``train.log_every`` steps, at epoch ends):
  on_train_line(run, fields)  add this observer's fields to the line (a dict), e.g. a metric's mean since the
                            last line: a new per-step metric is one observer, with no edit of the logger
An observer may end the run early by setting ``run.stop`` to a reason. Work that should not count as
training time (evaluation, checkpoints) runs inside ``run.off_clock()``; slow work one rank does alone (rank 0
writing a file) ends in a collective of the observer (e.g. ``comm.agreed``), so that the others wait for it
here, where the stall watchdog does not bound waits, rather than in the next step, where it does. A new
per-step feature is a new observer (or a new statistic), not an edit of the loop; ``train(cfg, observers=[...])``
adds one to a run.
"""

from .autobatch import AutoBatch
from .base import Observer
from .checkpoints import Checkpoints
from .early_stop import EarlyStop
from .evaluation import Evaluation
from .faults import FaultInjector
from .log import Log
from .target import Target

__all__ = ["AutoBatch", "Checkpoints", "EarlyStop", "Evaluation", "FaultInjector", "Log", "Observer", "Target"]
