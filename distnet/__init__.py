"""distnet: data-parallel neural-network training in NumPy over MPI.

The Python API (docs/guide/python.md): ``distnet.train(config, ...)`` and ``distnet.load(checkpoint)``, from
``distnet.api``; imported on first use, so that ``import distnet`` (and the ``distnet`` command) stays quick.
"""

__version__ = "0.1.0"

_API = ("train", "load", "resolve_config")


def __getattr__(name):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'distnet' has no attribute {name!r}")
