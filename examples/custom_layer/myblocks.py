"""A layer of one's own: a gated dense layer, y = (x W + b) * sigmoid(x V + c) (a GLU, Dauphin et al. 2017).

A config names it by import path, with this folder on the Python path (the working directory is):

    [[model.layers]]
    type = "myblocks:Gated"
    width = 64

Its constructor's arguments are its config keys (``in_features`` left out is inferred from the input; the
model passes ``dtype`` and ``seed``). What the contract asks (distnet/nn/layers/base.py): ``infer_shape``,
``create`` (params, and grads of the same shapes), ``forward``, and ``backward`` writing *into* ``grads``.
``gradcheck_gated.py`` checks its backward against finite differences.
"""

import numpy as np

from distnet.nn import init
from distnet.nn.layers import Layer


class Gated(Layer):
    decay = ("W", "V")  # weight decay on the weights, not the biases

    def __init__(self, width, in_features=None, init="he_normal", dtype=None, seed=None):
        super().__init__()
        self.width, self.in_features, self.init_name = int(width), in_features, init
        if self.width < 1:
            raise ValueError(f"Gated width must be >= 1, got {width}")

    def infer_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"Gated needs a 1-D per-sample input, got {tuple(input_shape)}: put a Flatten() before it")
        self.in_features = int(input_shape[0])
        return (self.width,)

    def create(self, rng):
        make = init.get(self.init_name)
        n, m = self.in_features, self.width
        self.params = {"W": make((n, m), n, m, rng, self.dtype), "b": np.zeros(m, self.dtype),
                       "V": make((n, m), n, m, rng, self.dtype), "c": np.zeros(m, self.dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def forward(self, x, training=True):
        p = self.params
        self._x = x
        self._a = x @ p["W"] + p["b"]
        self._g = 1 / (1 + np.exp(-(x @ p["V"] + p["c"])))
        return self._a * self._g

    def backward(self, dy):
        g, p, d = self._g, self.params, self.grads
        da = dy * g
        dz = dy * self._a * g * (1 - g)
        np.matmul(self._x.T, da, out=d["W"])
        np.sum(da, axis=0, out=d["b"])
        np.matmul(self._x.T, dz, out=d["V"])
        np.sum(dz, axis=0, out=d["c"])
        return da @ p["W"].T + dz @ p["V"].T if self.needs_dx else None

    def flops(self, input_shape=None):
        return 4 * self.in_features * self.width
