"""Layers: each a forward/backward pair plus the parameters it owns (see base.py for the contract)."""

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

__all__ = ["Layer", "LAYERS", "LAYER_TYPES", "register", *LAYERS]
