"""Layers: each a forward/backward pair plus the parameters it owns (see base.py for the contract)."""

from .activations import ELU, SELU, LeakyReLU, ReLU, Sigmoid, Softmax, Softplus, Tanh
from .base import Layer
from .conv import Conv2D, ConvTranspose2D
from .dense import Dense
from .dropout import Dropout
from .norm import BatchNorm
from .pool import AvgPool2D, MaxPool2D
from .shape import Flatten

LAYERS = {cls.__name__: cls for cls in (Dense, Conv2D, ConvTranspose2D, MaxPool2D, AvgPool2D, Flatten, Dropout,
                                         BatchNorm, ReLU, LeakyReLU, Sigmoid, Tanh, Softplus, ELU, SELU, Softmax)}

__all__ = ["Layer", "LAYERS", *LAYERS]
