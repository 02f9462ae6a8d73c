"""ZeRO stage 1: the optimizer state sharded over the ranks (Rajbhandari et al. 2020; PyTorch's
ZeroRedundancyOptimizer, DeepSpeed stage 1).

The replicated strategies sum the whole gradient on every rank and every rank then repeats the whole
optimizer step. Here each bucket of the arena (the same buckets, in the same order, overlapped with backward
as ``Bucketed``) is reduce-scattered instead: bucket k is cut into P consecutive parts and rank r receives
only the sum of its part, into ``shard_grads`` (this rank's parts of all buckets, one after the other). Each
rank then updates only its parts of the parameters with optimizers that hold only their state (one
optimizer per bucket part, over views of the arena), and after each part's update an in-place allgather
brings that bucket's new parameters to every rank, overlapping the next part's update.

Exactness: each parameter is updated by the same element-wise operations on the same summed gradient as in
the replicated step, so the parameters are bitwise those of ``Bucketed`` with the same rank count (for all
of distnet's optimizers). The gradient's global norm (statistics, clipping, the non-finite check) is the
sum of the ranks' shard norms: one scalar allreduce, rounded differently from one dot product over the
arena, so a run that clips follows the replicated one only to rounding. The reduce-scatter sends half the
bytes of an allreduce, and the allgather the other half: the same traffic, less optimizer work and memory
(optimizer state and its scratch buffers per rank / P).
"""

import numpy as np

from ...errors import ConfigError
from .base import register
from .bucketed import SIZES, Bucketed, plain, sizes


def parts(n, p):
    """Sizes of the P consecutive parts of n elements (the first n % P one larger)."""
    return [n // p + (r < n % p) for r in range(p)]


class Sharded:
    """What strategies share that leave only this rank's shard of the sum (``shard_grads``, laid out by
    ``plan``): the optimizer reads the shard, and the global norm is a sum of shard norms."""

    def summed(self):
        return self.shard_grads

    def global_sq(self):
        g = self.shard_grads
        return float(self.w.sum([np.dot(g, g)])[0])

    def optimizer(self, make):
        return self.optimizer_class(self, make)


class Zero(Sharded, Bucketed):
    """Reduce-scatter the buckets during backward; the optimizer (``optimizer(make)``) updates this rank's
    parts and allgathers each bucket's parameters."""

    name = "zero"

    def __init__(self, w, model, bucket_bytes=1 << 20, split_bytes=256 << 10):
        super().__init__(w, model, bucket_bytes=bucket_bytes, split_bytes=split_bytes)
        # per bucket: (its slice of the arena, the parts' sizes, this rank's slice, its slice of the shard)
        self.plan = []
        at = 0
        for _, sl in self.buckets:
            counts = parts(sl.stop - sl.start, w.size)
            lo = sl.start + sum(counts[:w.rank])
            mine = counts[w.rank]
            self.plan.append((sl, counts, slice(lo, lo + mine), slice(at, at + mine)))
            at += mine
        self.shard_grads = np.zeros(at, self.grads.dtype)
        self.by_slice = {plan[0].start: plan for plan in self.plan}

    def _send(self, sl):
        _, counts, _, into = self.by_slice[sl.start]
        self.reqs.append(self.w.ireduce_scatter(self.grads[sl], self.shard_grads[into], counts))


class ShardedOptimizer:
    """The optimizer ``make(params, grads, decay_mask)`` builds, once per bucket part that this rank owns,
    stepped part by part with each bucket's parameters allgathered behind it.

    ``state_dict()`` is collective (every rank must call it): it gathers the arena-sized state onto every
    rank, in the replicated optimizer's layout, so a checkpoint does not depend on the rank count;
    ``load_state_dict`` takes that layout and keeps this rank's parts.
    """

    def __init__(self, zero, make):
        self.zero, self.w = zero, zero.w
        model = zero.model
        mask = model.decay_mask
        self.parts = [make(model.params_flat[mine], zero.shard_grads[into], None if mask is None else mask[mine])
                      for _, _, mine, into in zero.plan]
        self.state_names = self.parts[0].state_names
        self.n = model.params_flat.size
        self.step_count = 0

    @property
    def lr(self):
        return self.parts[0].lr

    def step(self, lr=None):
        self.step_count += 1
        reqs = []
        params = self.zero.model.params_flat
        for opt, (sl, counts, _, _) in zip(self.parts, self.zero.plan):
            opt.step(lr)
            if self.w.size > 1:
                reqs.append(self.w.iallgather(params[sl], counts))
                self.w.testall(reqs)
        self.w.waitall(reqs)

    def state_dict(self):
        out = {"step": self.step_count}
        for name in self.state_names:
            full = np.zeros(self.n, self.zero.grads.dtype)
            reqs = []
            for opt, (sl, counts, mine, _) in zip(self.parts, self.zero.plan):
                full[mine] = getattr(opt, name)
                if self.w.size > 1:
                    reqs.append(self.w.iallgather(full[sl], counts))
            self.w.waitall(reqs)
            out[name] = full
        return out

    def load_state_dict(self, state):
        for name in self.state_names:
            if name in state and np.shape(state[name]) != (self.n,):
                raise ConfigError(f"{type(self.parts[0]).__name__} state '{name}' has shape "
                                  f"{np.shape(state[name])}, expected {(self.n,)} (a different model?)")
        for opt, (_, _, mine, _) in zip(self.parts, self.zero.plan):
            opt.load_state_dict({k: (v if k == "step" else np.asarray(v)[mine]) for k, v in state.items()})
        self.step_count = int(state["step"])

    def state_bytes(self):
        """Bytes of optimizer state this rank holds."""
        return sum(getattr(opt, name).nbytes for opt in self.parts for name in self.state_names)

    def __repr__(self):
        return f"ShardedOptimizer({self.parts[0]!r}, ranks={self.w.size})"


Zero.optimizer_class = ShardedOptimizer

register("zero", lambda w, model, opts: Zero(w, model, **sizes(opts)), SIZES, one_rank=plain)
