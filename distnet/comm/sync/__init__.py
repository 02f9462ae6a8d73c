"""Gradient-sync strategies (see base.py for the seam), chosen by ``comm.sync`` in the config."""

from .base import Flat, Rows, Sync
from .bucketed import Bucketed
from .compressed import Compressed
from .powersgd import PowerSGD
from .shm import SharedMemory
from .zero import Zero

STRATEGIES = {"bucketed": Bucketed, "flat": Flat, "zero": Zero, "fp16": Compressed, "bf16": Compressed,
              "powersgd": PowerSGD, "shm": SharedMemory}


def make(w, model, cc):
    """The strategy the config's ``[comm]`` table names, for ``model`` on world ``w``."""
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
                        error_feedback=cc["error_feedback"], **sizes)
    return Bucketed(w, model, **sizes)


__all__ = ["STRATEGIES", "Bucketed", "Compressed", "Flat", "PowerSGD", "Rows", "SharedMemory", "Sync", "Zero",
           "make"]
