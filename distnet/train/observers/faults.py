"""Fault injection for testing failure handling: ``DISTNET_FAULT=KIND@RANK:STEP``.

KIND is ``raise`` (an exception on that rank), ``nan`` (non-finite inputs, hence loss, on that rank) or
``crash`` (the process dies without a word, as if killed). Used by the test suite; harmless when the
variable is unset.
"""

import os

import numpy as np

from ...errors import ConfigError
from .base import Observer


class FaultInjector(Observer):
    def __init__(self, kind=None, rank=None, step=None, my_rank=0):
        self.kind, self.step = kind, step
        self.armed = kind is not None and rank == my_rank

    @classmethod
    def from_env(cls, my_rank):
        spec = os.environ.get("DISTNET_FAULT", "")
        if not spec:
            return cls()
        try:
            kind, where = spec.split("@")
            rank, step = (int(v) for v in where.split(":"))
            assert kind in ("raise", "nan", "crash")
        except (ValueError, AssertionError):
            raise ConfigError(f"DISTNET_FAULT={spec!r}: expected KIND@RANK:STEP with KIND raise, nan or crash")
        return cls(kind, rank, step, my_rank)

    def on_batch(self, run, x, y):
        if not self.armed or run.pos.global_step != self.step:
            return
        if self.kind == "raise":
            raise RuntimeError(f"injected fault at step {self.step}")
        if self.kind == "crash":
            os._exit(9)
        x[...] = np.nan  # the reader's batch is a fresh array
