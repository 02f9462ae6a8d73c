"""The gradient-sync seam: how the gradient arena is summed over ranks around backward.

A strategy hears four things from a step, and nothing else about training:
  begin(accum, stats)   a synchronized backward starts (``accum``: earlier micro-steps' gradient sum or
                        None; ``stats``: a small float64 vector to sum alongside, in place)
  rows(i)               layer i may report rows of its weight gradient as they are final: a ``Rows`` plan
                        passed to that layer's ``backward`` by ``Sequential``, or None
  layer_done(i)         layer i's gradients are final
  finish()              every gradient and the stats are summed; returns the seconds spent waiting
``measures()`` returns what the strategy measured about the last step (extra step statistics).
Strategies never touch layers: intra-layer progress arrives through the plan ``rows(i)`` returned.
"""

import time
from collections import namedtuple

# pieces: [(lo, hi), ...] row ranges of dW in the order to compute them; done(lo, hi) after each
Rows = namedtuple("Rows", "pieces done")


class Sync:
    """A strategy that sums the gradient arena over the ranks of ``w``."""

    name = "?"

    def __init__(self, w, model):
        self.w = w
        self.grads = model.grads_flat
        self.reqs = []
        self.accum = None
        self.wait_s = 0.0

    def begin(self, accum=None, stats=None):
        self.reqs = []
        self.accum = accum
        if stats is not None and self.w.size > 1:
            self.reqs.append(self.w.iallreduce(stats))

    def rows(self, i):
        return None

    def layer_done(self, i):
        pass

    def finish(self):
        t = time.perf_counter()
        self._complete()
        self.w.waitall(self.reqs)
        self.reqs = []
        self.accum = None
        self.wait_s = time.perf_counter() - t
        return self.wait_s

    def _complete(self):
        """What is left to do at finish() before waiting on the requests."""

    def measures(self):
        return {}


class Flat(Sync):
    """The reference strategy: one blocking allreduce of the whole arena after backward (ChainerMN's "flat")."""

    name = "flat"

    def _complete(self):
        if self.accum is not None:
            self.grads += self.accum
        self.w.allreduce(self.grads)
