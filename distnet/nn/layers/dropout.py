"""Inverted dropout: scale kept units by 1/(1-p) in training; identity at evaluation."""

import numpy as np

from ...errors import ConfigError
from .base import Layer, register


@register("dropout")
class Dropout(Layer):
    """Zero each unit with probability p in training.

    In a trained model the masks come from ``reseed(draws)`` (a ``distnet.nn.draws.Draws`` bound to this layer):
    a sample's mask is a function of (seed, epoch, its global index, the layer), whatever the rank count. Used
    alone, or after ``reseed(generator)``, the layer draws from a NumPy generator (its own, seeded by ``seed``).
    """

    def __init__(self, p=0.5, seed=0):
        super().__init__()
        if not 0 <= p < 1:
            raise ConfigError(f"Dropout probability must be in [0, 1), got {p}")
        self.p = float(p)
        self.rng = np.random.default_rng(seed)  # used while no draws are bound
        self.draws = None
        self._mask = None

    def reseed(self, draws):
        """Bind this step's ``Draws``; a ``numpy.random.Generator`` replaces the own generator instead (and
        unbinds draws), as does None (keeping the generator)."""
        if draws is None or isinstance(draws, np.random.Generator):
            self.rng = draws if draws is not None else self.rng
            self.draws = None
        else:
            self.draws = draws

    def forward(self, x, training=True):
        if not training or self.p == 0:
            self._mask = None
            return x
        dtype = np.float64 if x.dtype == np.float64 else np.float32
        if self.draws is None:
            u = self.rng.random(x.shape, dtype=dtype)
        elif len(self.draws) != x.shape[0]:
            raise ValueError(f"{self!r} got a batch of {x.shape[0]} samples but draws for {len(self.draws)} "
                             f"sample indices")
        else:
            u = self.draws.uniform(x.shape[1:], dtype)
        self._mask = (u >= self.p) * np.asarray(1.0 / (1.0 - self.p), x.dtype)
        return x * self._mask

    def backward(self, dy):
        return dy if self._mask is None else dy * self._mask

    def __repr__(self):
        return f"Dropout(p={self.p})"
