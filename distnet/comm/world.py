"""The world: this process's rank among the others, and the few collectives distnet needs.

This is the only module that imports mpi4py. Without a launcher the same code runs as a world of one: MPI
starts as a singleton, or, when no MPI library can be loaded at all, a serial stand-in takes its place.

Every wait on a collective is a poll (``Testall``) rather than a blocking MPI call, for two reasons: the
stall watchdog (``watchdog.py``) can bound it and find out which rank is missing, and Python's signal
handlers, which run only between bytecodes, are not shut out for as long as a stalled peer keeps a C call
waiting.
"""

import os
import pickle
import socket
import sys
import time
from contextlib import contextmanager
from functools import partial

import numpy as np

from ..errors import UserError
from .watchdog import Watchdog

# What launchers set to say how many processes they started. If one says "more than one" while MPI sees a
# world of one, every process would train alone on the whole batch and write the same files.
_LAUNCHER_SIZE_VARS = ("SLURM_STEP_NUM_TASKS", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")


WAITS = {  # how a rank waits on a collective between polls (comm.wait)
    "yield": os.sched_yield,  # free when this core has nothing else to run; else the others run first
    "spin": None,  # poll without pause
    "sleep": partial(time.sleep, 20e-6),  # the kernel makes it ~70 us: least CPU, slower answers
}


class SerialWorld:
    """A world of one, for machines without any MPI library."""

    rank, size = 0, 1
    local_size = 1  # ranks on this rank's host (by host name), this one included
    step, phase = 0, "setup"  # where this rank is (the loop says): the watchdog reports and bounds by it

    @contextmanager
    def in_phase(self, phase):
        """``with w.in_phase("eval"): ...``: waits inside are in that phase (the watchdog bounds "step" by
        ``abort_s`` and every other phase by ``io_abort_s``)."""
        before, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = before

    def wait_mode(self, mode):
        """How a rank waits on a collective (``comm.wait``), between two polls of it: "yield" hands the core to
        any other process or thread ready to run on it (a rank it waits for, when ranks outnumber cores) and
        costs nothing when none is; "spin" polls without pause; "sleep" sleeps ~70 us, the least CPU."""

    def watch(self, warn_s, abort_s, io_abort_s=0.0):
        """Bound waits: warn after ``warn_s``; abort after ``abort_s`` in the training step and after
        ``io_abort_s`` elsewhere (setup, evaluation, checkpoints); 0 = never."""

    def allreduce(self, arr):
        """Sum ``arr`` over ranks, in place; returns it."""
        return arr

    def iallreduce(self, arr):
        """Start a non-blocking in-place sum of ``arr``; returns the request (None here)."""
        return None

    def ireduce_scatter(self, send, recv, counts):
        """Start summing ``send`` over ranks, rank r receiving the r-th of the consecutive parts of sizes
        ``counts`` into ``recv`` (len counts[rank]); returns the request."""
        recv[...] = send
        return None

    def iallgather(self, buf, counts):
        """Start an in-place gather of ``buf``'s consecutive parts of sizes ``counts`` (rank r supplies the
        r-th) onto every rank; returns the request."""
        return None

    def waitall(self, reqs):
        pass

    def testall(self, reqs):
        """Poke MPI's progress engine; True when all requests are done."""
        return True

    def sum(self, values):
        """A small vector of float64 sums over ranks (loss sums, counts); returns a new array."""
        return self.allreduce(np.array(values, dtype=np.float64))

    def allgather(self, obj):
        return [obj]

    def bcast(self, obj):
        return obj

    def barrier(self):
        pass

    def split(self, color, key=0):
        """A world of the ranks that gave the same ``color`` (an int >= 0; None: this rank is in no group and
        gets None), ranked by ``key`` (ties: by rank here); collective. ``free()`` it when done. A world of one
        is its own split."""
        return None if color is None else self

    def free(self):
        """Release a split's communicator (nothing for a world itself)."""

    def abort(self, code):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def library(self):
        """The first line of the MPI library's version string."""
        return "no MPI (a world of one)"


class MPIWorld(SerialWorld):
    """MPI.COMM_WORLD behind the few operations distnet needs."""

    def __init__(self, MPI):
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.ctl = self.comm.Dup()  # the watchdog's messages, apart from training's
        # who is who, known before anything can stall: a stall message names host and pid
        self.whois = self.comm.allgather((socket.gethostname(), os.getpid()))
        self.local_size = sum(host == self.whois[self.rank][0] for host, _ in self.whois)
        self.watchdog = Watchdog(self)
        self.wait_mode("yield")
        self.windows = []  # shared-memory windows (``shared``); never freed: they live as long as the process

    def watch(self, warn_s, abort_s, io_abort_s=0.0):
        self.watchdog.warn_s, self.watchdog.abort_s, self.watchdog.io_abort_s = warn_s, abort_s, io_abort_s

    def wait_mode(self, mode):
        self.watchdog.pause = WAITS[mode]

    def allreduce(self, arr):
        if self.size > 1:
            self.waitall([self.comm.Iallreduce(self.MPI.IN_PLACE, arr, op=self.MPI.SUM)])
        return arr

    def iallreduce(self, arr):
        return self.comm.Iallreduce(self.MPI.IN_PLACE, arr, op=self.MPI.SUM)

    def ireduce_scatter(self, send, recv, counts):
        return self.comm.Ireduce_scatter(send, recv, list(counts), op=self.MPI.SUM)

    def iallgather(self, buf, counts):
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
        return self.comm.Iallgatherv(self.MPI.IN_PLACE, [buf, (list(counts), displs)])

    def waitall(self, reqs):
        testall = self.MPI.Request.Testall
        self.watchdog.wait(lambda: testall(reqs))

    def testall(self, reqs):
        return self.MPI.Request.Testall(reqs)

    def allgather(self, obj):
        if self.size == 1:
            return [obj]
        data = np.frombuffer(pickle.dumps(obj), np.uint8)
        sizes = np.zeros(self.size, np.int64)
        self.waitall([self.comm.Iallgather(np.array([data.size], np.int64), sizes)])
        out = np.empty(int(sizes.sum()), np.uint8)
        self.waitall([self.comm.Iallgatherv(data, [out, sizes.tolist()])])
        ends = np.cumsum(sizes).tolist()
        return [pickle.loads(out[a:b].tobytes()) for a, b in zip([0] + ends[:-1], ends)]

    def bcast(self, obj):
        if self.size == 1:
            return obj
        data = np.frombuffer(pickle.dumps(obj), np.uint8) if self.rank == 0 else None
        size = np.array([0 if data is None else data.size], np.int64)
        self.waitall([self.comm.Ibcast(size, root=0)])
        buf = data.copy() if self.rank == 0 else np.empty(int(size[0]), np.uint8)
        self.waitall([self.comm.Ibcast(buf, root=0)])
        return obj if self.rank == 0 else pickle.loads(buf.tobytes())

    def barrier(self):
        self.waitall([self.comm.Ibarrier()])

    def split(self, color, key=0):
        return _split(self, self.comm, color, key)

    def shared(self, counts, dtype):
        """One array per rank, rank k's of ``counts[k]`` elements of ``dtype``, in memory that every rank reads
        and writes directly (an MPI shared-memory window; collective, every rank on one host: ``local_size ==
        size``). ``fence()`` makes the writes before it visible to every rank after it."""
        MPI, dtype = self.MPI, np.dtype(dtype)
        win = MPI.Win.Allocate_shared(int(counts[self.rank]) * dtype.itemsize, dtype.itemsize, comm=self.comm)
        win.Lock_all(MPI.MODE_NOCHECK)  # one passive epoch for the window's life; fence() syncs within it
        self.windows.append(win)
        return [np.frombuffer(win.Shared_query(k)[0], dtype, count=int(c)) if c else np.zeros(0, dtype)
                for k, c in enumerate(counts)]

    def fence(self):
        """Every rank's writes to ``shared`` arrays before this are visible to every rank after it (a memory
        barrier on each window around a barrier of all ranks; the barrier is a watchdog-bounded wait)."""
        for win in self.windows:
            win.Sync()
        self.barrier()
        for win in self.windows:
            win.Sync()

    # the watchdog's point-to-point messages (small objects on their own communicator)
    def post(self, dest, tag, obj):
        """Start sending ``obj`` to rank ``dest``; returns the request (complete it with ``testall``)."""
        return self.ctl.isend(obj, dest=dest, tag=tag)

    def fetch(self, tag):
        """A message with ``tag`` that has arrived, as (source, obj), or None."""
        status = self.MPI.Status()
        if not self.ctl.iprobe(source=self.MPI.ANY_SOURCE, tag=tag, status=status):
            return None
        return status.Get_source(), self.ctl.recv(source=status.Get_source(), tag=tag)

    def abort(self, code):
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)

    def library(self):
        return " ".join(self.MPI.Get_library_version().strip().splitlines()[0].split())


class SubWorld(MPIWorld):
    """A sub-communicator of an ``MPIWorld`` (``split``) with the same collectives. Its waits are bounded by the
    parent's watchdog (which probes and names ranks of the parent world), and it is where the parent is: its
    ``step`` and ``phase`` are the parent's."""

    def __init__(self, parent, sub):
        self.parent, self.MPI, self.comm = parent, parent.MPI, sub
        self.rank, self.size = sub.Get_rank(), sub.Get_size()
        self.ctl, self.watchdog, self.windows = parent.ctl, parent.watchdog, []
        self.ranks = self.allgather(parent.rank)  # the parent's rank of each of this world's ranks
        self.whois = [parent.whois[r] for r in self.ranks]
        self.local_size = sum(host == self.whois[self.rank][0] for host, _ in self.whois)

    step = property(lambda self: self.parent.step, lambda self, v: setattr(self.parent, "step", v))
    phase = property(lambda self: self.parent.phase, lambda self, v: setattr(self.parent, "phase", v))

    def watch(self, warn_s, abort_s, io_abort_s=0.0):
        self.parent.watch(warn_s, abort_s, io_abort_s)

    def wait_mode(self, mode):
        self.parent.wait_mode(mode)

    def split(self, color, key=0):
        return _split(self.parent, self.comm, color, key)

    def free(self):
        if self.comm != self.MPI.COMM_NULL:
            self.comm.Free()

    def abort(self, code):
        self.parent.abort(code)


def _split(parent, comm, color, key):
    sub = comm.Split(parent.MPI.UNDEFINED if color is None else int(color), int(key))
    return None if sub == parent.MPI.COMM_NULL else SubWorld(parent, sub)


def hosts(w):
    """{host name: [ranks on it]} in rank order (collective). Host names, not MPI's shared-memory groups,
    decide what shares a machine's cores."""
    out = {}
    for rank, host in enumerate(w.allgather(socket.gethostname())):
        out.setdefault(host, []).append(rank)
    return out


def check_launch(size):
    """A world of one while the launcher says it started several processes is a user error."""
    started = launched() if size == 1 else None
    if started:
        var, n, _ = started
        raise UserError(f"the launcher started {n} processes ({var}={n}) but MPI sees a world of one, so "
                        "each would train alone: under Slurm use 'srun --mpi=pmi2' (the MPICH wheel) or "
                        "'--mpi=pmix' (OpenMPI), or start with the cluster's own mpirun/mpiexec")


_LAUNCHER_RANK_VARS = ("SLURM_PROCID", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")


def launched():
    """(variable, processes, this one's rank) when a launcher says it started several processes, else None;
    read from the environment, without starting MPI."""
    for var in _LAUNCHER_SIZE_VARS:
        n = os.environ.get(var, "")
        if n.isdigit() and int(n) > 1:
            ranks = [os.environ[v] for v in _LAUNCHER_RANK_VARS if os.environ.get(v, "").isdigit()]
            return var, int(n), int(ranks[0]) if ranks else 0
    return None


def library_uninitialized():
    """The first line of the version string of the MPI library mpi4py loads, without starting MPI ("" when
    none loads): what a launcher for other processes needs to know (srun's --mpi), from a process that is
    not itself a rank."""
    try:
        import mpi4py

        if _world is None:
            mpi4py.rc.initialize = False
        from mpi4py import MPI

        return " ".join(MPI.Get_library_version().strip().splitlines()[0].split())
    except Exception:  # noqa: BLE001 - no MPI to ask
        return ""


_world = None


def world():
    """The process's world (created once): MPI when it loads, else a world of one."""
    global _world
    if _world is not None:
        return _world
    if os.environ.get("DISTNET_NO_MPI") == "1":  # asked for explicitly (bench's 1-rank baselines)
        _world = SerialWorld()
        return _world
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as e:
        launched = [v for v in _LAUNCHER_SIZE_VARS if os.environ.get(v, "1") not in ("", "1")]
        if launched:
            raise UserError(f"started by a launcher ({launched[0]}={os.environ[launched[0]]}) but mpi4py "
                            f"cannot load MPI ({e}); install the 'mpich' extra or point mpi4py at the "
                            "cluster's MPI (see cluster/README.md)") from None
        _world = SerialWorld()
        return _world
    w = MPIWorld(MPI)
    check_launch(w.size)
    _world = w
    return _world
