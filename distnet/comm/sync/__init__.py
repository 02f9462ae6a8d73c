"""Gradient-sync strategies (see base.py for the seam), chosen by ``comm.sync`` in the config."""

from .base import Flat, Rows, Sync
from .bucketed import Bucketed

STRATEGIES = {"bucketed": Bucketed, "flat": Flat}


def make(w, model, cc):
    """The strategy the config's ``[comm]`` table names, for ``model`` on world ``w``."""
    if cc["sync"] == "flat" or not cc["overlap"]:
        return Flat(w, model)
    return Bucketed(w, model, bucket_bytes=int(cc["bucket_mb"] * 2 ** 20), split_bytes=int(cc["split_mb"] * 2 ** 20))


__all__ = ["STRATEGIES", "Bucketed", "Flat", "Rows", "Sync", "make"]
