"""The gradient-sync seam: how the gradient arena is summed over ranks around backward.

A strategy hears four things from a step, and nothing else about training:
  begin(accum, stats, norm_at)
                        a synchronized backward starts (``accum``: earlier micro-steps' gradient sum or
                        None; ``stats``: a small float64 vector to sum alongside, in place; ``norm_at``:
                        None, or the index in ``stats`` where the strategy adds this rank's own squared
                        gradient norm, |arena|² before ``accum`` is added, before the stats are summed)
  rows(i)               layer i may report rows of its weight gradient as they are final: a ``Rows`` plan
                        passed to that layer's ``backward`` by ``Sequential``, or None
  layer_done(i)         layer i's gradients are final
  finish()              every gradient and the stats are summed; returns the seconds spent waiting
``measures()`` returns what the strategy measured about the last step (extra step statistics).
Strategies never touch layers: intra-layer progress arrives through the plan ``rows(i)`` returned.

The local squared norm (the gradient noise scale's small-batch term) must be taken from each part of the
arena just before that part is summed in place, so it is the strategy's job: ``_local(sl)`` before a slice
is sent, ``_send_stats()`` once every slice has been seen (the stats then leave last, with the last
gradients, instead of at ``begin``).
"""

import time

import numpy as np
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
        self.stats, self.norm_at, self.local_sq = None, None, 0.0

    def begin(self, accum=None, stats=None, norm_at=None):
        self.reqs = []
        self.accum = accum
        self.stats, self.norm_at, self.local_sq = stats, norm_at, 0.0
        if norm_at is None:
            self._send_stats()

    def _local(self, sl):
        """Slice ``sl`` of the arena holds this rank's own gradient (not yet summed, ``accum`` not added)."""
        if self.norm_at is not None:
            g = self.grads[sl]
            self.local_sq += float(np.dot(g, g))

    def _send_stats(self):
        """Start summing the stats (with the local squared norm added, when asked for); once per step."""
        if self.stats is None:
            return
        if self.norm_at is not None:
            self.stats[self.norm_at] += self.local_sq
        if self.w.size > 1:
            self.reqs.append(self.w.iallreduce(self.stats))
        self.stats = None

    def rows(self, i):
        return None

    def layer_done(self, i):
        pass

    def finish(self):
        t = time.perf_counter()
        self._complete()
        self._send_stats()
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
        self._local(slice(None))
        if self.accum is not None:
            self.grads += self.accum
        self._send_stats()
        self.w.allreduce(self.grads)
