"""Inverted dropout: scale kept units by 1/(1-p) in training; identity at evaluation."""

import numpy as np

from ..errors import ConfigError
from .base import Layer


class Dropout(Layer):
    """Zero each unit with probability p in training; the generator comes from ``reseed(rng)``."""

    def __init__(self, p=0.5, seed=0):
        super().__init__()
        if not 0 <= p < 1:
            raise ConfigError(f"Dropout probability must be in [0, 1), got {p}")
        self.p = float(p)
        self.rng = np.random.default_rng(seed)  # used until the trainer calls reseed
        self._mask = None

    def reseed(self, rng):
        self.rng = rng

    def forward(self, x, training=True):
        if not training or self.p == 0:
            self._mask = None
            return x
        keep = self.rng.random(x.shape, dtype=np.float64 if x.dtype == np.float64 else np.float32) >= self.p
        self._mask = keep * np.asarray(1.0 / (1.0 - self.p), x.dtype)
        return x * self._mask

    def backward(self, dy):
        return dy if self._mask is None else dy * self._mask

    def __repr__(self):
        return f"Dropout(p={self.p})"
