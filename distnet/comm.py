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

    def local_size(self):
        """How many ranks share this machine."""
        return 1

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

    def local_size(self):
        """How many ranks share this machine (collective: every rank must call it)."""
        node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        try:
            return node.Get_size()
        finally:
            node.Free()

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

def settle(w, error):
    """After work any rank may fail on its own (opening files, building the model): agree collectively,
    so that no rank is left waiting in a later collective. ``error`` is this rank's exception or None.

    Returns the highest exit code over ranks (0 when all succeeded). One line is printed, by the first
    rank that failed: without a rank prefix when every rank failed alike (a bad config or dataset is the
    same everywhere), with it when the ranks disagree.
    """
    mine = None if error is None else (getattr(error, "exit_code", 1), str(error))
    everyone = w.allgather(mine)
    failed = [r for r, m in enumerate(everyone) if m is not None]
    if not failed:
        return 0
    if w.rank == failed[0]:
        alike = len(failed) == w.size and len({everyone[r][1] for r in failed}) == 1
        report(w, error, rank_prefix=not alike)
    return max(everyone[r][0] for r in failed)


def report(w, error, rank_prefix=True):
    """Print this rank's error: one line for a user error, the traceback and a line otherwise."""
    where = f"rank {w.rank}: " if w.size > 1 and rank_prefix else ""
    if isinstance(error, UserError):
        print(f"distnet: error: {where}{error}", file=sys.stderr, flush=True)
    else:
        import traceback

        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
        print(f"distnet: error: {where}{type(error).__name__}: {error}", file=sys.stderr, flush=True)


def fail_alone(w, error):
    """This rank failed where the others may be inside a collective: report and end the whole job."""
    report(w, error)
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

    Buckets are contiguous slices of the arena, formed in backward's order (from the last layer towards the
    first) until each holds at least ``bucket_bytes``; a bucket starts its non-blocking allreduce when
    backward has finished all of it, and ``finish()`` waits for all. Between layers the hooks call Testall,
    since MPI moves data only inside MPI calls.

    The first layer with parameters is last in backward, so whatever bucket holds it would wait for the
    whole backward pass and its allreduce would be fully exposed. When that layer is a Dense layer with a
    large weight (the MLP's 784x256 is 85 % of its gradients), it computes dW in row blocks of about
    ``split_bytes`` (0: never split), last rows first (the arena's descending order), and each block is
    sent as soon as it is computed, overlapping the next block's matrix product, so that only the last
    block's allreduce need be exposed. Each block is itself computed in four row pieces with a Testall
    after each: on shared memory with one core per rank MPI moves data only inside MPI calls, and polling
    four times per block (rather than once) took the MLP's exposed wait from ~0.9x to ~0.4x of one flat
    allreduce, with no extra collectives.

    With gradient accumulation, ``accum`` holds the earlier micro-steps' sum; it is added bucket by bucket
    just before that bucket's allreduce starts, so accumulation costs no extra pass over the arena.
    ``begin(stats=...)`` also sums a small float64 vector (loss sums, counts) during backward, so the step
    pays no extra latency-bound collective for them.
    """

    def __init__(self, w, model, bucket_bytes=1 << 20, overlap=True, split_bytes=256 << 10):
        self.w = w
        self.grads = model.grads_flat
        self.overlap = overlap and w.size > 1
        itemsize = self.grads.itemsize
        self.split_layer, self.row_blocks = None, None
        units = []  # (ready key, lo, hi, closes its bucket), in the order backward makes them ready
        with_params = [i for i, (lo, hi) in enumerate(model.layer_ranges) if hi > lo]
        for i in reversed(with_params):
            lo, hi = model.layer_ranges[i]
            blocks = self._row_blocks(model, i, split_bytes) if self.overlap and i == with_params[0] else None
            if blocks is None:
                units.append((i, lo, hi, False))
                continue
            self.split_index, self.split_layer, self.row_blocks = i, model.layers[i], blocks
            self.pieces = self._pieces(blocks)
            out = model.layers[i].grads["W"].shape[1]
            (r0, _), rest = blocks[0], blocks[1:]
            units.append(((i, r0), lo + r0 * out, hi, True))  # the last rows, the bias, and the open bucket
            units += [((i, a), lo + a * out, lo + b * out, True) for a, b in rest]
        self.buckets = []  # (ready key, slice), in the order they become ready
        stop = None
        for n, (key, lo, hi, closes) in enumerate(units):
            stop = hi if stop is None else stop
            if closes or (stop - lo) * itemsize >= bucket_bytes or n == len(units) - 1:
                self.buckets.append((key, slice(lo, stop)))
                stop = None
        self.ready_at = dict(self.buckets)
        self.reqs = []
        self.accum = None
        self.wait_s = 0.0

    @staticmethod
    def _row_blocks(model, i, split_bytes):
        """Row blocks [(lo, hi), ...] (last first) for layer i's dW, or None if it should not be split."""
        layer = model.layers[i]
        if split_bytes <= 0 or not hasattr(layer, "row_blocks") or "W" not in layer.grads:
            return None
        gW = layer.grads["W"]
        lo = model.layer_ranges[i][0]
        if gW.nbytes < 2 * split_bytes or gW.ctypes.data != model.grads_flat[lo:].ctypes.data:
            return None
        rows = max(1, split_bytes // (gW.shape[1] * gW.itemsize))
        return [(a, min(a + rows, gW.shape[0])) for a in range(0, gW.shape[0], rows)][::-1]

    @staticmethod
    def _pieces(blocks, parts=4):
        """Each block's rows in PARTS pieces, last rows first: the matrix products between two polls."""
        out = []
        for a, b in blocks:
            step = max(1, -(-(b - a) // parts))
            out += [(x, min(x + step, b)) for x in range(a, b, step)][::-1]
        return out

    def begin(self, accum=None, stats=None):
        """Start a synchronized backward; ``accum`` (or None) is added to each bucket before it is sent,
        ``stats`` (a small float64 array, or None) is summed in place alongside."""
        self.reqs = []
        self.accum = accum
        if stats is not None and self.w.size > 1:
            self.reqs.append(self.w.iallreduce(stats))
        if self.split_layer is not None:
            self.split_layer.row_blocks = (self.pieces, self._rows_done)

    def _start(self, sl):
        if self.accum is not None:
            self.grads[sl] += self.accum[sl]
        if self.overlap:
            self.reqs.append(self.w.iallreduce(self.grads[sl]))

    def _rows_done(self, lo, hi):
        """The split layer's hook: rows lo:hi of its dW are final; a block is ready with its first rows."""
        sl = self.ready_at.get((self.split_index, lo))
        if sl is not None:
            self._start(sl)
        self.w.testall(self.reqs)

    def on_layer_done(self, i):
        sl = self.ready_at.get(i)
        if sl is not None:
            self._start(sl)
        elif self.reqs:
            self.w.testall(self.reqs)

    def finish(self):
        """Wait for all buckets (or, without overlap, reduce them now); returns the seconds spent waiting."""
        t = time.perf_counter()
        if self.split_layer is not None:
            self.split_layer.row_blocks = None
        if not self.overlap and self.w.size > 1:
            self.w.allreduce(self.grads)
        self.w.waitall(self.reqs)
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
