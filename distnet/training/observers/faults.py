"""Fault injection for testing failure handling: ``DISTNET_FAULT=KIND@RANK:STEP``.

KIND is ``raise`` (an exception on that rank), ``nan`` (non-finite inputs, hence loss, on that rank),
``crash`` (the process dies without a word, as if killed), ``stop`` (the process stops itself with SIGSTOP
before that step, as a rank hung in a C call: the others wait for it in the step, and a test must SIGKILL it
afterwards), ``sleep`` (the rank pauses before that step, as a
slow node would: the others wait for it in the step) or ``slow-save`` (after that step every rank goes off
the clock, the rank pauses, and all meet in a barrier: what ``Checkpoints.save`` does when rank 0 writes to a
slow file system). A pause lasts ``DISTNET_FAULT_SLEEP_S`` seconds (3), or until the process is sent a stop
signal, so that a test can make it long and still land a signal in it. Used by the test suite; harmless when
the variable is unset. Under ``distnet run`` a fault fires on the first attempt only (``DISTNET_ATTEMPT`` =
0), so that the restarted job can show that it recovers.
"""

import os
import signal
import time

import numpy as np

from ...errors import ConfigError
from .base import Observer
from .signals import received

KINDS = ("raise", "nan", "crash", "stop", "sleep", "slow-save")


def pause():
    """Sleep DISTNET_FAULT_SLEEP_S seconds, or until this process received a stop signal."""
    end = time.monotonic() + float(os.environ.get("DISTNET_FAULT_SLEEP_S", "3"))
    while time.monotonic() < end and not received():
        time.sleep(0.02)


class FaultInjector(Observer):
    def __init__(self, kind=None, rank=None, step=None, my_rank=0):
        self.kind, self.step = kind, step
        self.armed = kind is not None and rank == my_rank
        self.saving = kind == "slow-save"  # on every rank

    @classmethod
    def from_env(cls, my_rank):
        spec = os.environ.get("DISTNET_FAULT", "")
        if not spec or os.environ.get("DISTNET_ATTEMPT", "0") != "0":
            return cls()
        try:
            kind, where = spec.split("@")
            rank, step = (int(v) for v in where.split(":"))
            assert kind in KINDS
        except (ValueError, AssertionError):
            raise ConfigError(f"DISTNET_FAULT={spec!r}: expected KIND@RANK:STEP with KIND {', '.join(KINDS)}") from None
        return cls(kind, rank, step, my_rank)

    def on_batch(self, run, x, y):
        if not self.armed or run.pos.global_step != self.step:
            return
        if self.kind == "raise":
            raise RuntimeError(f"injected fault at step {self.step}")
        if self.kind == "crash":
            os._exit(9)
        if self.kind == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
        if self.kind == "sleep":
            pause()
        if self.kind == "nan":
            x[...] = np.nan  # the reader's batch is a fresh array

    def on_step(self, run, stats):
        if self.saving and stats.step == self.step:
            with run.off_clock():
                if self.armed:
                    pause()
                run.world.barrier()
