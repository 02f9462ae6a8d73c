"""Everything MPI: the world, collective checks, abort-on-error, and bucketed gradient allreduce.

The rest of distnet never imports mpi4py. Without ``mpiexec`` the same code runs as a world of one: MPI
starts as a singleton, or, when no MPI library can be loaded at all, a serial stand-in takes its place.
"""

import os
import sys
import time

import numpy as np

from .errors import UserError

# Environment variables that launchers set; if one says "more than one process" but MPI fails to load,
# running anyway would make every process believe it is rank 0 of 1 and write the same files.
_LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE")


class SerialWorld:
    """A world of one, for machines without any MPI library."""

    rank, size, is_mpi = 0, 1, False

    def allreduce(self, arr):
        return arr

    def iallreduce(self, arr):
        return None

    def waitall(self, reqs):
        pass

    def testall(self, reqs):
        return True

    def allreduce_max(self, value):
        return value

    def allgather(self, obj):
        return [obj]

    def bcast(self, obj):
        return obj

    def barrier(self):
        pass

    def abort(self, code):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def wtime(self):
        return time.perf_counter()


class MPIWorld(SerialWorld):
    """MPI.COMM_WORLD behind the few operations distnet needs."""

    is_mpi = True

    def __init__(self, MPI):
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()

    def allreduce(self, arr):
        """Sum ``arr`` over ranks, in place; returns it."""
        if self.size > 1:
            self.comm.Allreduce(self.MPI.IN_PLACE, arr, op=self.MPI.SUM)
        return arr

    def iallreduce(self, arr):
        """Start a non-blocking in-place sum of ``arr``; returns the request."""
        return self.comm.Iallreduce(self.MPI.IN_PLACE, arr, op=self.MPI.SUM)

    def waitall(self, reqs):
        self.MPI.Request.Waitall(reqs)

    def testall(self, reqs):
        """Poke MPI's progress engine; True when all requests are done."""
        return self.MPI.Request.Testall(reqs)

    def allreduce_max(self, value):
        return self.comm.allreduce(value, op=self.MPI.MAX) if self.size > 1 else value

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code):
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)

    def wtime(self):
        return self.MPI.Wtime()


_world = None


def world():
    """The process's world (created once): MPI when it loads, else a world of one."""
    global _world
    if _world is not None:
        return _world
    if os.environ.get("DISTNET_NO_MPI") == "1":
        _world = SerialWorld()
        return _world
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as e:
        launched = [v for v in _LAUNCHER_SIZE_VARS if os.environ.get(v, "1") not in ("", "1")]
        if launched:
            raise UserError(f"started by an MPI launcher ({launched[0]}={os.environ[launched[0]]}) but mpi4py "
                            f"cannot load MPI ({e}); install the 'mpich' extra or point mpi4py at the "
                            "cluster's MPI (see cluster/README.md)") from None
        _world = SerialWorld()
        return _world
    _world = MPIWorld(MPI)
    return _world


# -- collective agreement and failure handling -------------------------------------------------------

def agree(w, error):
    """Collectively agree whether any rank failed; ``error`` is this rank's exception or None.

    Returns the highest exit code over ranks (0 when every rank succeeded). Use it after work that any
    rank may fail on its own (opening files, building the model) so that no rank is left in a collective.
    """
    code = 0 if error is None else getattr(error, "exit_code", 1)
    return w.allreduce_max(code)


def report(w, error, all_failed):
    """Print this rank's error once: rank 0 speaks when it failed too, so P ranks don't print P lines."""
    if error is None or (all_failed and w.rank != 0):
        return
    where = f"rank {w.rank}: " if w.size > 1 else ""
    if isinstance(error, UserError):
        print(f"distnet: error: {where}{error}", file=sys.stderr, flush=True)
    else:
        import traceback

        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
        print(f"distnet: error: {where}{type(error).__name__}: {error}", file=sys.stderr, flush=True)


def fail_alone(w, error):
    """This rank failed where the others may be inside a collective: report and end the whole job."""
    report(w, error, all_failed=False)
    code = getattr(error, "exit_code", 1)
    if w.size > 1:
        w.abort(code)  # MPI_Abort: mpiexec ends every rank and exits with this code
    return code


def check_replicas(w, model, when):
    """Stop with a clear message if the model's parameters differ between ranks."""
    if w.size == 1:
        return
    hashes = w.allgather(model.param_hash())
    if len(set(hashes)) != 1:
        bad = [r for r, h in enumerate(hashes) if h != hashes[0]]
        raise ReplicaMismatch(f"model replicas differ {when}: ranks {bad} disagree with rank 0 (the ranks run "
                              "different numpy/BLAS builds or a layer draws unseeded random numbers)")


class ReplicaMismatch(RuntimeError):
    exit_code = 1


# -- bucketed gradient allreduce ---------------------------------------------------------------------

class GradSync:
    """Sum the gradient arena over ranks in buckets that start as soon as backward has finished them.

    Buckets are contiguous slices of the arena made of whole layers, formed from the last layer backwards
    (backward's order) until each holds at least ``bucket_bytes``. ``on_layer_done(i)`` (Sequential's
    backward hook) starts a bucket's non-blocking allreduce once its first layer is done; ``finish()``
    waits for all. Between layers the hook calls Testall to let MPI progress the transfers in flight.

    With gradient accumulation, ``accum`` holds the earlier micro-steps' sum; it is added bucket by bucket
    just before that bucket's allreduce starts, so accumulation costs no extra pass over the arena.
    """

    def __init__(self, w, model, bucket_bytes=4 << 20, overlap=True):
        self.w = w
        self.grads = model.grads_flat
        self.overlap = overlap and w.size > 1
        itemsize = self.grads.itemsize
        self.buckets = []  # (first layer index, slice), in the order they become ready
        start_layer, stop = None, None
        for i in range(len(model.layers) - 1, -1, -1):
            lo, hi = model.layer_ranges[i]
            if hi == lo:
                continue
            if stop is None:
                stop = hi
            start_layer = i
            if (stop - lo) * itemsize >= bucket_bytes:
                self.buckets.append((i, slice(lo, stop)))
                start_layer, stop = None, None
        if stop is not None:
            self.buckets.append((start_layer, slice(model.layer_ranges[start_layer][0], stop)))
        self.ready_at = {i: sl for i, sl in self.buckets}
        self.reqs = []
        self.accum = None
        self.wait_s = 0.0

    def begin(self, accum=None):
        """Start a synchronized backward; ``accum`` (or None) is added to each bucket before it is sent."""
        self.reqs = []
        self.accum = accum

    def on_layer_done(self, i):
        sl = self.ready_at.get(i)
        if sl is not None:
            if self.accum is not None:
                self.grads[sl] += self.accum[sl]
            if self.overlap:
                self.reqs.append(self.w.iallreduce(self.grads[sl]))
        elif self.reqs:
            self.w.testall(self.reqs)

    def finish(self):
        """Wait for all buckets (or, without overlap, reduce them now); returns the seconds spent waiting."""
        t = time.perf_counter()
        if self.overlap:
            self.w.waitall(self.reqs)
        elif self.w.size > 1:
            self.w.allreduce(self.grads)
        self.reqs = []
        self.wait_s = time.perf_counter() - t
        return self.wait_s


def flat_allreduce(w, grads):
    """The reference strategy: one blocking allreduce of the whole gradient arena."""
    return w.allreduce(grads)


def stats_allreduce(w, values):
    """Sum a small float64 vector over ranks (loss sums, counts, flags)."""
    arr = np.asarray(values, dtype=np.float64)
    return w.allreduce(arr)


def average_buffers(w, model):
    """Average non-trained state (BatchNorm running statistics) over ranks, so replicas agree."""
    if w.size == 1 or not model.buffers:
        return
    bufs = list(model.buffers.values())
    flat = np.concatenate([b.ravel().astype(np.float64) for b in bufs])
    w.allreduce(flat)
    flat /= w.size
    offset = 0
    for b in bufs:
        b[...] = flat[offset:offset + b.size].reshape(b.shape)
        offset += b.size
