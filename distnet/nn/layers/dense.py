"""Dense (fully connected) layer: y = x @ W + b."""

import numpy as np

from ...errors import ConfigError
from .. import init as initializers
from .base import Layer, register


@register("dense")
class Dense(Layer):
    """y = x @ W + b with W (in, out), b (out,); ``in_features=None`` is inferred from a 1-D input shape."""

    decay = ("W",)

    def __init__(self, in_features, out_features, init=None, bias=True, dtype=None, seed=None):
        super().__init__()
        self.in_features = None if in_features is None else int(in_features)
        self.out_features = int(out_features)
        if self.out_features < 1 or (self.in_features is not None and self.in_features < 1):
            raise ConfigError(f"Dense sizes must be >= 1, got ({in_features}, {out_features})")
        self.init = initializers.get(init)
        self.bias = bool(bias)
        if self.in_features is not None:  # sizes known: own arrays at once, so the layer works alone
            self.build((self.in_features,), dtype or np.float32, np.random.default_rng(0 if seed is None else seed))

    def infer_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ConfigError(f"Dense needs a 1-D per-sample input, got shape {tuple(input_shape)}: "
                              f"put a Flatten() before it")
        if self.in_features is None:
            self.in_features = int(input_shape[0])
        elif input_shape[0] != self.in_features:
            raise ConfigError(f"{self!r} got per-sample input shape {tuple(input_shape)}")
        return (self.out_features,)

    def create(self, rng):
        shape = (self.in_features, self.out_features)
        self.params = {"W": self.init(shape, self.in_features, self.out_features, rng, self.dtype)}
        if self.bias:
            self.params["b"] = np.zeros(self.out_features, self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def forward(self, x, training=True):
        x = np.asarray(x, dtype=self.dtype)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"{self!r} expects input (N, {self.in_features}), got {x.shape}")
        self._x = x
        y = x @ self.params["W"]
        if self.bias:
            y += self.params["b"]
        return self.hold("y", y)

    reports_rows = True  # backward can compute dW in row pieces and report each (see backward's ``rows``)

    def backward(self, dy, rows=None):
        """``rows`` (from a gradient-sync strategy, via Sequential) is None or a plan with ``pieces``, the row
        ranges of dW in the order to compute them, and ``done(lo, hi)``, called after each: rows already
        final can travel while the next ones are computed."""
        gW = self.grads["W"]
        if self.bias:
            np.sum(dy, axis=0, out=self.grads["b"])
        if rows is None:
            np.matmul(self._x.T, dy, out=gW)
        else:
            for lo, hi in rows.pieces:
                np.matmul(self._x[:, lo:hi].T, dy, out=gW[lo:hi])
                rows.done(lo, hi)
        return self.hold("dx", dy @ self.params["W"].T) if self.needs_dx else None

    def flops(self, input_shape=None):
        return 2 * self.in_features * self.out_features

    def __repr__(self):
        return f"Dense({self.in_features}, {self.out_features}{'' if self.bias else ', bias=False'})"
