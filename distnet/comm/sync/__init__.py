"""Gradient-sync strategies (see base.py for the seam), chosen by ``comm.sync`` in the config."""

import os

from ..failures import Stop
from .base import Flat, Rows, Sync
from .bucketed import Bucketed
from .compressed import Compressed
from .powersgd import PowerSGD
from .shm import SharedMemory
from .zero import Zero

STRATEGIES = {"bucketed": Bucketed, "flat": Flat, "zero": Zero, "fp16": Compressed, "bf16": Compressed,
              "powersgd": PowerSGD, "shm": SharedMemory}


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


def attach(w, sync):
    """On every rank once setup succeeded everywhere (collective): check that every rank took the same strategy
    (``auto`` decides on each rank), then ``sync.attach()``."""
    if w.size > 1:
        names = w.allgather(sync.name)
        if len(set(names)) > 1:
            took = ", ".join(f"rank {r}: {n}" for r, n in enumerate(names))
            raise Stop(f"the ranks took different gradient-sync strategies ({took}; comm.sync = \"auto\" "
                       "decides on each rank from its host and free /dev/shm): set comm.sync explicitly", 2)
    sync.attach()


def make(w, model, cc):
    """The strategy the config's ``[comm]`` table names, for ``model`` on world ``w``. ``auto`` (the default)
    is ``shm`` when every rank is on one host (and its shared memory has room), else ``bucketed``."""
    if cc["sync"] == "auto":
        cc = dict(cc, sync="shm" if shared_memory_fits(w, model) else "bucketed")
    if cc["sync"] == "flat" or (not cc["overlap"] and cc["sync"] == "bucketed"):
        return Flat(w, model)
    sizes = dict(bucket_bytes=int(cc["bucket_mb"] * 2 ** 20), split_bytes=int(cc["split_mb"] * 2 ** 20))
    if w.size == 1:  # nothing is sent: every strategy is the plain step on one rank
        return Bucketed(w, model, **sizes)
    if cc["sync"] == "zero":
        return Zero(w, model, **sizes)
    if cc["sync"] == "shm":
        return SharedMemory(w, model)
    if cc["sync"] in ("fp16", "bf16"):
        return Compressed(w, model, cc["sync"], error_feedback=cc["error_feedback"], **sizes)
    if cc["sync"] == "powersgd":
        return PowerSGD(w, model, rank=cc["powersgd_rank"], warmup=cc["powersgd_warmup"],
                        min_size=cc["powersgd_min_size"], error_feedback=cc["error_feedback"], **sizes)
    return Bucketed(w, model, **sizes)


__all__ = ["STRATEGIES", "Bucketed", "Compressed", "Flat", "PowerSGD", "Rows", "SharedMemory", "Sync", "Zero",
           "attach", "make"]
