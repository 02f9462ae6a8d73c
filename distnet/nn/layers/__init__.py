"""Layers: each a forward/backward pair plus the parameters it owns (see base.py for the contract)."""

import importlib
import sys

from .activations import ELU, SELU, LeakyReLU, ReLU, Sigmoid, Softmax, Softplus, Tanh
from .base import TYPES, Layer, register
from .conv import Conv2D, ConvTranspose2D
from .dense import Dense
from .dropout import Dropout
from .norm import BatchNorm
from .pool import AvgPool2D, L2Pool2D, MaxPool2D
from .shape import Flatten

# The registry of layer types: config type name -> class. Each layer registers itself beside its class with
# @register("name"); a layer in a new module needs that module imported above.
LAYER_TYPES = TYPES
LAYERS = {cls.__name__: cls for cls in LAYER_TYPES.values()}  # class name -> class



def layer_class(kind):
    """The class a config's ``type`` names: a registered type name (``"dense"``), or an import path
    ``"module:Class"`` (``"myblocks:Gated"``, ``"pkg.mod:Cls"``) of a ``Layer`` subclass of one's own, imported
    from the Python path with the working directory first. None for an unknown name; a ``ValueError`` (one
    line) for a path that does not import or names no ``Layer``."""
    if ":" not in kind:
        return LAYER_TYPES.get(kind)
    module, _, name = kind.partition(":")
    if not module or not name:
        raise ValueError(f"layer type {kind!r}: an import path is module:Class, e.g. \"myblocks:Gated\"")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # the working directory, as `python -c` would search it
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"layer type {kind!r}: cannot import module {module!r} ({e}): put {module}.py in the "
                         "working directory or on PYTHONPATH") from None
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing: name it, in one line
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"layer type {kind!r}: importing {module!r} failed: {type(e).__name__}: {first}") from None
    cls = getattr(mod, name, None)
    if cls is None:
        raise ValueError(f"layer type {kind!r}: module {module!r} has no {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise ValueError(f"layer type {kind!r}: {module}.{name} is not a subclass of distnet.nn.layers.Layer")
    return cls


__all__ = ["Layer", "LAYERS", "LAYER_TYPES", "layer_class", "register", *LAYERS]
