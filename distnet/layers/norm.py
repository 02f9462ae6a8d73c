"""Batch normalization over (N, F) or per channel over (N, C, H, W)."""

import numpy as np

from ..errors import ConfigError
from .base import Layer


class BatchNorm(Layer):
    """Normalize by batch statistics in training, running statistics at evaluation; then gamma*x + beta.

    ``gamma``/``beta`` are trained (no weight decay); ``running_mean``/``running_var`` live in ``buffers``
    and are updated in place: r = (1 - momentum)*r + momentum*batch (the variance unbiased, as PyTorch).
    Statistics are per rank in data-parallel training.
    """

    def __init__(self, num_features=None, momentum=0.1, eps=1e-5, dtype=None):
        super().__init__()
        self.num_features = None if num_features is None else int(num_features)
        self.momentum = float(momentum)
        self.eps = float(eps)
        if self.num_features is not None:
            self.build((self.num_features,), dtype or np.float32)

    def infer_shape(self, input_shape):
        if len(input_shape) not in (1, 3):
            raise ConfigError(f"BatchNorm needs per-sample input (F,) or (C, H, W), got {tuple(input_shape)}")
        if self.num_features is None:
            self.num_features = int(input_shape[0])
        elif input_shape[0] != self.num_features:
            raise ConfigError(f"{self!r} got per-sample input shape {tuple(input_shape)}")
        return tuple(input_shape)

    def create(self, rng):
        f = self.num_features
        self.params = {"gamma": np.ones(f, self.dtype), "beta": np.zeros(f, self.dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.buffers = {"running_mean": np.zeros(f, self.dtype), "running_var": np.ones(f, self.dtype)}

    def forward(self, x, training=True):
        axes = (0,) if x.ndim == 2 else (0, 2, 3)
        shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
        if training:
            count = x.size // self.num_features
            mean = x.mean(axis=axes)
            var = x.var(axis=axes)
            m = self.momentum
            for buf, stat in ((self.buffers["running_mean"], mean),
                              (self.buffers["running_var"], var * (count / max(count - 1, 1)))):
                buf *= 1 - m
                buf += m * stat
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        inv_std = 1 / np.sqrt(var + self.eps)
        xhat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
        self._cache = (xhat, inv_std, axes, shape, training)
        return xhat * self.params["gamma"].reshape(shape) + self.params["beta"].reshape(shape)

    def backward(self, dy):
        xhat, inv_std, axes, shape, training = self._cache
        gg, gb = self.grads["gamma"], self.grads["beta"]
        np.sum(dy * xhat, axis=axes, out=gg)
        np.sum(dy, axis=axes, out=gb)
        scale = (self.params["gamma"] * inv_std).reshape(shape)
        if not training:
            return dy * scale
        count = dy.size // self.num_features
        return scale * (dy - (gb.reshape(shape) + xhat * gg.reshape(shape)) / count)

    def flops(self, input_shape=None):
        return 4 * int(np.prod(input_shape or self.input_shape))

    def __repr__(self):
        return f"BatchNorm({self.num_features}, momentum={self.momentum}, eps={self.eps})"
