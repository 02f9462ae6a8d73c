"""Flatten: (N, ...) -> (N, prod(...))."""

import math

from .base import Layer, register


@register("flatten")
class Flatten(Layer):
    """Reshape each sample to 1-D (a view when the input is contiguous)."""

    def infer_shape(self, input_shape):
        return (math.prod(input_shape),)

    def forward(self, x, training=True):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._shape)
