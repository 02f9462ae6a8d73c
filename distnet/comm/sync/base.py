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
  done()                the step is over: its update applied, or skipped (after the optimizer, every step)
``measures()`` returns what the strategy measured about the last step (extra step statistics).
After finish(), the step reads the sum through two more calls: ``summed()`` (the part of the summed gradient
this rank's optimizer reads: the whole arena unless the optimizer state is sharded) and ``global_sq()``
(the summed gradient's squared L2 norm, identical on every rank). ``optimizer(make)`` builds the optimizer from
``make(params, grads, decay_mask)``: over the whole arena, or (ZeRO) over this rank's shard.
Strategies never touch layers: intra-layer progress arrives through the plan ``rows(i)`` returned.
A strategy is built during setup, where no collective may run (any rank may fail there alone); what needs the
other ranks (shared memory) waits for ``attach()``, which ``comm.sync.attach(w, sync)`` calls on every rank
once setup has succeeded everywhere, before the first step.

The local squared norm (the gradient noise scale's small-batch term) must be taken from each part of the
arena just before that part is summed in place, so it is the strategy's job: ``_local(sl)`` before a slice
is sent, ``_send_stats()`` once every slice has been seen (the stats then leave last, with the last
gradients, instead of at ``begin``).

Each module of this folder registers its strategies at import (``register``: the name, the ``[comm]`` option
keys, the constructor, what ``auto`` makes of it and what it promises); the package imports every module, so
a new strategy is one new module.
"""

import time
from collections import namedtuple
from dataclasses import dataclass

import numpy as np

from ...schema import Key

# pieces: [(lo, hi), ...] row ranges of dW in the order to compute them; done(lo, hi) after each
Rows = namedtuple("Rows", "pieces done")


@dataclass(frozen=True)
class Strategy:
    """A registered strategy: what ``comm.sync = NAME`` builds, the ``[comm]`` keys it reads, what it promises.

    ``build(w, model, opts)`` returns the ``Sync`` (``opts``: the config's value of each of ``keys``, the
    default where a ``[comm]`` table lacks one). ``keys``: option name -> ``distnet.schema.Key`` (type,
    default, bounds); a key several strategies read is declared alike by each. ``auto(w, model)``: a
    preference (the highest wins, ties in registration order) when ``comm.sync = "auto"`` may take this
    strategy on this rank, else None; without it ``auto`` never takes it (no collective: setup holds none).
    ``one_rank(w, model, opts)``: what it builds on one rank, where nothing is sent (None: ``build``).
    ``exact``: the summed gradient is the true sum, to rounding (False: lossy, ``error`` its documented
    relative error per element and step, None where no such bound holds). ``resumable``: everything it keeps
    across steps is in the checkpoint (or nothing is), so a resumed run is bitwise an uninterrupted one."""

    name: str
    build: object
    keys: dict
    auto: object = None
    one_rank: object = None
    exact: bool = True
    error: float = None
    resumable: bool = True


STRATEGIES = {}  # name -> Strategy, in registration order: comm.sync's names ("auto" aside)
OPTIONS = {}  # option key -> Key: every registered strategy's [comm] keys (config's [comm] table reads it live)


def register(name, build, keys=None, **promises):
    """Register strategy ``name`` (see ``Strategy`` for ``build``, ``keys`` and the rest); returns the
    ``Strategy``. Every module in ``distnet/comm/sync/`` is imported by the package, so a module that calls
    this at import is a new ``comm.sync`` name with nothing else edited; code outside the package (a plugin,
    a test) calls it before building a config that names the strategy."""
    keys = dict(keys or {})
    if not isinstance(name, str) or not name.isidentifier() or name == "auto":
        raise ValueError(f"strategy name {name!r}: a word other than 'auto'")
    if name in STRATEGIES:
        raise ValueError(f"strategy {name!r} is registered already")
    for key, spec in keys.items():
        if not isinstance(spec, Key):
            raise TypeError(f"strategy {name!r}: option {key!r} must be a distnet.schema.Key, got {spec!r}")
        if OPTIONS.get(key, spec) != spec:
            raise ValueError(f"strategy {name!r} declares comm.{key} as {spec}, another one as {OPTIONS[key]}")
    strategy = Strategy(name, build, keys, **promises)
    STRATEGIES[name] = strategy
    OPTIONS.update(keys)
    return strategy


class Sync:
    """A strategy that sums the gradient arena over the ranks of ``w``."""

    name = "?"

    def __init__(self, w, model):
        self.w = w
        self.model = model
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
        self._arrived()
        self.reqs = []
        self.accum = None
        self.wait_s = time.perf_counter() - t
        return self.wait_s

    def attach(self):
        """Collective, once, after every rank's setup succeeded: set up what needs the other ranks."""

    def done(self):
        """The step's update is applied (or skipped): what must happen before the next step's forward."""

    def _complete(self):
        """What is left to do at finish() before waiting on the requests."""

    def _arrived(self):
        """What is left to do at finish() once every request is done (decompressing, say)."""

    def measures(self):
        return {}

    def summed(self):
        """The part of the summed gradient this rank's optimizer reads (after finish)."""
        return self.grads

    def global_sq(self):
        """The summed gradient's squared L2 norm, the same on every rank (after finish)."""
        g = self.summed()
        return float(np.dot(g, g))

    def optimizer(self, make):
        """The optimizer that ``make(params, grads, decay_mask)`` builds, over the arenas this strategy updates."""
        return make(self.model.params_flat, self.grads, self.model.decay_mask)


class Flat(Sync):
    """The reference strategy: one blocking allreduce of the whole arena after backward (ChainerMN's "flat")."""

    name = "flat"

    def _complete(self):
        self._local(slice(None))
        if self.accum is not None:
            self.grads += self.accum
        self._send_stats()
        self.w.allreduce(self.grads)


register("flat", lambda w, model, opts: Flat(w, model), {})  # one allreduce after backward: the reference
