"""Everything MPI. The rest of distnet never imports mpi4py.

- ``world``: ranks and the collectives (the only module importing mpi4py);
- ``failures``: agreeing on failures, reporting them once, aborting when a rank fails alone;
- ``replicas``: checking replicas stay alike, averaging non-trained buffers;
- ``sync``: gradient-synchronization strategies behind one small interface.
"""

from . import sync
from .failures import Stop, agreed, fail_alone, report, run_on_every_rank, settle
from .replicas import ReplicaMismatch, average_buffers, check_replicas
from .world import MPIWorld, SerialWorld, check_launch, hosts, world

__all__ = ["MPIWorld", "ReplicaMismatch", "SerialWorld", "Stop", "agreed", "average_buffers", "check_launch",
           "check_replicas", "fail_alone", "hosts", "report", "run_on_every_rank", "settle", "sync", "world"]
