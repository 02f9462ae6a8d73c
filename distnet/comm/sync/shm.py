"""ZeRO-1 through shared memory, for ranks on one host: one parameter arena for all, each rank's gradient
arena readable by the others, no message passing for the gradients or the parameters.

``zero`` moves every gradient and every parameter through MPI: on one host that is a reduce-scatter and an
allgather whose copies and progress polls cost the ranks' cores as much as the halved update saves. Here
(after ``w.shared``) the parameters live once, in a shared-memory window that every rank's layers read, and
each rank's gradient arena lives in the window too. A step then needs no communication during backward:

    backward into this rank's own gradient arena (earlier micro-steps' sum added after)
    fence                      every rank's gradient is final and visible
    shard <- sum over ranks of their arenas' part r (this rank's contiguous 1/P of the arena), in rank order
    the optimizer updates part r of the shared parameters from the shard, with this rank's part of the state
    fence (done)               every part is updated, and every shard summed, before any rank's next
                               forward reads the parameters or its backward writes its gradient arena

Two barriers and one pass over 1/P of every rank's gradients replace the reduce-scatter, the allgather and
the polling; the statistics (and the global norm, a sum of shard norms as in ``zero``) still travel as
small allreduces. The checkpointed optimizer state is gathered into the replicated layout as in ``zero``,
so a run resumes on any rank count and with any ``comm.sync``.

Exactness: the shard is summed in rank order: on 2 ranks that is the same sum as an allreduce (a + b), so the
parameters are bitwise those of ``bucketed`` and ``zero``; on more ranks MPI may add in another order, and
the results agree to rounding. Only for ranks on one host (``comm.sync = "zero"`` across hosts).
"""

import os

import numpy as np

from ...errors import ConfigError
from .base import Sync, register
from .bucketed import SIZES, plain
from .zero import Sharded, ShardedOptimizer, parts


def shared_memory_fits(w, model, path="/dev/shm"):
    """Whether ``auto`` takes ``shm`` on this rank: every rank on one host, and room in its shared memory for
    the parameter arena and one gradient arena per rank, twice over (a container's /dev/shm may be 64 MiB).
    No communication (setup may hold no collective): ``attach`` checks that every rank took the same."""
    if w.size == 1 or w.local_size != w.size:
        return False
    try:
        st = os.statvfs(path)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = 0
    return free >= 2 * (w.size + 1) * model.params_flat.nbytes


class SharedMemory(Sharded, Sync):
    """The gradient shard summed from the other ranks' arenas in shared memory; ``optimizer(make)`` updates
    this rank's part of the one shared parameter arena.

    Built during setup, where a collective is not allowed (any rank may fail there alone), it holds the
    model's private arenas until ``attach()``, which every rank calls once setup has succeeded everywhere:
    it allocates the windows, copies rank 0's parameters in and moves the model and the optimizer there."""

    name = "shm"

    def __init__(self, w, model):
        if w.local_size != w.size:
            raise ConfigError(f'comm.sync = "shm" needs every rank on one host ({w.local_size} of {w.size} '
                              'share this one): use comm.sync = "zero" across hosts')
        super().__init__(w, model)
        n, dtype = model.params_flat.size, model.params_flat.dtype
        counts = parts(n, w.size)
        lo = sum(counts[:w.rank])
        self.mine = slice(lo, lo + counts[w.rank])
        self.shard_grads = np.zeros(counts[w.rank], dtype)
        self.plan = [(slice(0, n), counts, self.mine, slice(0, counts[w.rank]))]  # ShardedOptimizer's layout
        self.arenas = None  # every rank's gradient arena, once attached
        self.sharded = None  # the optimizer, once built

    def attach(self):
        w, model = self.w, self.model
        n, dtype = model.params_flat.size, model.params_flat.dtype
        params = w.shared([n] + [0] * (w.size - 1), dtype)[0]
        self.arenas = w.shared([n] * w.size, dtype)
        if w.rank == 0:
            params[...] = model.params_flat  # identical on every rank (broadcast or resumed)
        w.fence()
        model.relocate(params, self.arenas[w.rank])
        self.grads = model.grads_flat
        if self.sharded is not None:
            self.sharded.parts[0].params = model.params_flat[self.mine]

    def optimizer(self, make):
        self.sharded = super().optimizer(make)
        return self.sharded

    def _complete(self):
        if self.arenas is None:
            raise RuntimeError("comm.sync.attach(w, sync) must run on every rank before the first step")
        self._local(slice(None))
        if self.accum is not None:
            self.grads += self.accum
        self._send_stats()
        self.w.fence()  # every rank's gradient is final
        a = self.arenas
        np.add(a[0][self.mine], a[1][self.mine], out=self.shard_grads)
        for other in a[2:]:
            self.shard_grads += other[self.mine]

    def done(self):
        self.w.fence()


class SharedOptimizer(ShardedOptimizer):
    """``ShardedOptimizer`` over one part, the rank's contiguous 1/P of the arena: the parameters it updates
    are already everyone's, so nothing is gathered (the strategy's ``done()`` fences them)."""

    def step(self, lr=None):
        self.step_count += 1
        self.parts[0].step(lr)


SharedMemory.optimizer_class = SharedOptimizer

# auto: preferred to bucketed (0) wherever it fits; SIZES: the plain bucketed step's, on one rank
register("shm", lambda w, model, opts: SharedMemory(w, model), SIZES, one_rank=plain,
         auto=lambda w, model: 1 if shared_memory_fits(w, model) else None)
