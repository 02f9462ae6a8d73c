"""Fault injection for testing failure handling: ``DISTNET_FAULT=KIND@RANK:STEP``.

KIND is ``raise`` (an exception on that rank), ``nan`` (a non-finite loss on that rank) or ``crash`` (the
process dies without a word, as if killed). Used by the test suite; harmless when the variable is unset.
"""

import os

from ..errors import ConfigError


class FaultInjector:
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

    def maybe_fail(self, step):
        if self.armed and step == self.step:
            if self.kind == "raise":
                raise RuntimeError(f"injected fault at step {step}")
            if self.kind == "crash":
                os._exit(9)

    def maybe_corrupt(self, step, value):
        if self.armed and step == self.step and self.kind == "nan":
            return float("nan")
        return value
