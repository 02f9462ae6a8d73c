"""Batch normalization over (N, F) or per channel over (N, C, H, W)."""

import numpy as np

from ...errors import ConfigError
from .base import Layer, register


@register("batchnorm")
class BatchNorm(Layer):
    """Normalize by batch statistics in training, running statistics at evaluation; then gamma*x + beta.

    ``gamma``/``beta`` are trained (no weight decay); ``running_mean``/``running_var`` live in ``buffers``
    and are updated in place: r = (1 - momentum)*r + momentum*batch (the variance unbiased, as PyTorch).

    Statistics are per rank in data-parallel training (the default). With ``sync=True`` they are those of the
    global batch, as PyTorch's SyncBatchNorm: given a reduction by ``distribute(allreduce)``, forward sums
    per-feature sums and sums of squares and the count over ranks (one allreduce of 2F+1 float64), and
    backward the per-feature sums of dy and dy*xhat (one of 2F), so that
    dx = gamma*inv_std*(dy - mean(dy) - xhat*mean(dy*xhat)) takes global means. ``grads`` stay this rank's
    sums (the gradient sync adds them up). Without a reduction (alone, one rank) it is plain BatchNorm.
    """

    def __init__(self, num_features=None, momentum=0.1, eps=1e-5, dtype=None, sync=False):
        super().__init__()
        if not isinstance(sync, (bool, np.bool_)):
            raise ConfigError(f"BatchNorm sync must be true or false, got {sync!r}")
        self.num_features = None if num_features is None else int(num_features)
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.sync = bool(sync)
        self.allreduce = None  # set by distribute(); used only when sync and training
        if self.num_features is not None:
            self.build((self.num_features,), dtype or np.float32)

    def distribute(self, allreduce):
        self.allreduce = allreduce

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

    def _global_stats(self, mean, var, count):
        """Mean, (biased) variance and sample count of the global batch from this rank's, by one allreduce of
        the sums and sums of squares (formed in float64 from the rank's two-pass mean and variance)."""
        f = self.num_features
        buf = np.empty(2 * f + 1, np.float64)
        buf[:f] = mean
        buf[f:2 * f] = buf[:f] * buf[:f] + var
        buf[:2 * f] *= count
        buf[2 * f] = count
        buf = self.allreduce(buf)
        total = buf[2 * f]
        global_mean = buf[:f] / total
        global_var = np.maximum(buf[f:2 * f] / total - global_mean * global_mean, 0)
        return global_mean.astype(mean.dtype), global_var.astype(var.dtype), int(total)

    def forward(self, x, training=True):
        axes = (0,) if x.ndim == 2 else (0, 2, 3)
        shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
        synced = training and self.sync and self.allreduce is not None
        count = x.size // self.num_features
        if training:
            mean = x.mean(axis=axes)
            var = x.var(axis=axes)
            if synced:
                mean, var, count = self._global_stats(mean, var, count)
            m = self.momentum
            for buf, stat in ((self.buffers["running_mean"], mean),
                              (self.buffers["running_var"], var * (count / max(count - 1, 1)))):
                buf *= 1 - m
                buf += m * stat
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        inv_std = 1 / np.sqrt(var + self.eps)
        xhat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
        self._cache = (xhat, inv_std, axes, shape, training, synced, count)
        return xhat * self.params["gamma"].reshape(shape) + self.params["beta"].reshape(shape)

    def backward(self, dy):
        xhat, inv_std, axes, shape, training, synced, count = self._cache
        gg, gb = self.grads["gamma"], self.grads["beta"]
        np.sum(dy * xhat, axis=axes, out=gg)
        np.sum(dy, axis=axes, out=gb)
        scale = (self.params["gamma"] * inv_std).reshape(shape)
        if not training:
            return dy * scale
        if not self.needs_dx:  # nothing consumes d(input): skip it, and the allreduce, on every rank alike
            return None
        sum_dy, sum_dy_xhat = gb, gg
        if synced:
            f = self.num_features
            buf = np.empty(2 * f, np.float64)
            buf[:f], buf[f:] = gb, gg
            buf = self.allreduce(buf)
            sum_dy, sum_dy_xhat = buf[:f].astype(dy.dtype), buf[f:].astype(dy.dtype)
        return scale * (dy - (sum_dy.reshape(shape) + xhat * sum_dy_xhat.reshape(shape)) / count)

    def flops(self, input_shape=None):
        return 4 * int(np.prod(input_shape or self.input_shape))

    def __repr__(self):
        sync = ", sync=True" if self.sync else ""
        return f"BatchNorm({self.num_features}, momentum={self.momentum}, eps={self.eps}{sync})"
