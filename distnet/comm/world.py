"""The world: this process's rank among the others, and the few collectives distnet needs.

This is the only module that imports mpi4py. Without a launcher the same code runs as a world of one: MPI
starts as a singleton, or, when no MPI library can be loaded at all, a serial stand-in takes its place.
"""

import os
import socket
import sys

import numpy as np

from ..errors import UserError

# What launchers set to say how many processes they started. If one says "more than one" while MPI sees a
# world of one, every process would train alone on the whole batch and write the same files.
_LAUNCHER_SIZE_VARS = ("SLURM_STEP_NUM_TASKS", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")


class SerialWorld:
    """A world of one, for machines without any MPI library."""

    rank, size = 0, 1

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

    def allreduce(self, arr):
        if self.size > 1:
            self.comm.Allreduce(self.MPI.IN_PLACE, arr, op=self.MPI.SUM)
        return arr

    def iallreduce(self, arr):
        return self.comm.Iallreduce(self.MPI.IN_PLACE, arr, op=self.MPI.SUM)

    def ireduce_scatter(self, send, recv, counts):
        return self.comm.Ireduce_scatter(send, recv, list(counts), op=self.MPI.SUM)

    def iallgather(self, buf, counts):
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
        return self.comm.Iallgatherv(self.MPI.IN_PLACE, [buf, (list(counts), displs)])

    def waitall(self, reqs):
        self.MPI.Request.Waitall(reqs)

    def testall(self, reqs):
        return self.MPI.Request.Testall(reqs)

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

    def library(self):
        return " ".join(self.MPI.Get_library_version().strip().splitlines()[0].split())


def hosts(w):
    """{host name: [ranks on it]} in rank order (collective). Host names, not MPI's shared-memory groups,
    decide what shares a machine's cores."""
    out = {}
    for rank, host in enumerate(w.allgather(socket.gethostname())):
        out.setdefault(host, []).append(rank)
    return out


def check_launch(size):
    """A world of one while the launcher says it started several processes is a user error."""
    if size != 1:
        return
    for var in _LAUNCHER_SIZE_VARS:
        n = os.environ.get(var, "")
        if n.isdigit() and int(n) > 1:
            raise UserError(f"the launcher started {n} processes ({var}={n}) but MPI sees a world of one, so "
                            "each would train alone: under Slurm use 'srun --mpi=pmi2' (the MPICH wheel) or "
                            "'--mpi=pmix' (OpenMPI), or start with the cluster's own mpirun/mpiexec")


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
