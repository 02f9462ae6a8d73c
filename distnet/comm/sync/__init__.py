"""Gradient-sync strategies (see base.py for the seam), chosen by ``comm.sync`` in the config.

The registry is this folder: every module in it is imported here, and each registers its strategies
(``base.register``: name, ``[comm]`` option keys, constructor, what ``auto`` makes of it). ``STRATEGIES``
holds them and ``OPTIONS`` their option keys, which ``distnet.config`` reads for the ``[comm]`` table and
``comm.sync``'s allowed names; ``make`` looks the name up. A new strategy is one new module here.
"""

import importlib
import pkgutil

from ...errors import ConfigError
from ..failures import Stop
from .base import OPTIONS, STRATEGIES, Flat, Rows, Strategy, Sync, register
from .bucketed import Bucketed  # the classes that tests and tools build directly
from .compressed import Compressed
from .powersgd import PowerSGD
from .shm import SharedMemory, shared_memory_fits
from .zero import Zero

for _module in pkgutil.iter_modules(__path__):  # every module registers its strategies on import
    importlib.import_module(f"{__name__}.{_module.name}")


def names():
    """The values ``comm.sync`` takes: "auto", then every registered strategy."""
    return ("auto", *STRATEGIES)


def choose(w, model):
    """The strategy ``comm.sync = "auto"`` takes on this rank: the registered one whose ``auto(w, model)``
    prefers it most (the first registered among equals). Decided on each rank alone: ``attach`` checks that
    every rank took the same."""
    best = None
    for spec in STRATEGIES.values():
        rank = spec.auto(w, model) if spec.auto is not None else None
        if rank is not None and (best is None or rank > best[0]):
            best = (rank, spec.name)
    if best is None:
        raise ConfigError('comm.sync = "auto": no registered strategy offers itself; set comm.sync')
    return best[1]


def make(w, model, cc):
    """The strategy the config's ``[comm]`` table names, for ``model`` on world ``w``: the registered
    strategy's constructor with its option keys' values (their defaults where ``cc`` lacks one), or what it
    builds on one rank. ``auto`` (the default) is ``choose``'s pick."""
    name = choose(w, model) if cc["sync"] == "auto" else cc["sync"]
    spec = STRATEGIES.get(name)
    if spec is None:
        raise ConfigError(f"comm.sync = {name!r} is not a gradient-sync strategy: valid are {', '.join(names())}")
    opts = {key: cc.get(key, option.default) for key, option in spec.keys.items()}
    build = spec.one_rank if w.size == 1 and spec.one_rank is not None else spec.build
    return build(w, model, opts)


def attach(w, sync):
    """On every rank once setup succeeded everywhere (collective): check that every rank took the same strategy
    (``auto`` decides on each rank), then ``sync.attach()``."""
    if w.size > 1:
        taken = w.allgather(sync.name)
        if len(set(taken)) > 1:
            took = ", ".join(f"rank {r}: {n}" for r, n in enumerate(taken))
            raise Stop(f"the ranks took different gradient-sync strategies ({took}; comm.sync = \"auto\" "
                       "decides on each rank from its host and free /dev/shm): set comm.sync explicitly", 2)
    sync.attach()


__all__ = ["OPTIONS", "STRATEGIES", "Bucketed", "Compressed", "Flat", "PowerSGD", "Rows", "SharedMemory",
           "Strategy", "Sync", "Zero", "attach", "choose", "make", "names", "register", "shared_memory_fits"]
