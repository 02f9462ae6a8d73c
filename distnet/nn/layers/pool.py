"""Max, average and L2 pooling over NCHW windows (stride defaults to the kernel size).

All loop over the kh*kw kernel offsets only, each step a strided view of the whole batch. Non-overlapping
windows (stride >= kernel, the common 2x2 case) write each input position at most once; overlapping
windows accumulate.
"""

import numpy as np

from ...errors import ConfigError
from .base import Layer, register
from .im2col import Scratch, pair


class _Pool2D(Layer):
    """Window geometry shared by the pooling layers."""

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else pair(stride, "stride")
        if min(self.kernel_size) < 1 or min(self.stride) < 1:
            raise ConfigError(f"{type(self).__name__}: kernel_size and stride must be >= 1")
        self.overlapping = any(s < k for s, k in zip(self.stride, self.kernel_size))

    def infer_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ConfigError(f"{type(self).__name__} needs per-sample input (C, H, W), got {input_shape}")
        return (input_shape[0], *self.out_hw(input_shape[1:]))

    def out_hw(self, hw, error=ConfigError):
        """Output (Ho, Wo) for input (H, W); ``error`` is raised when the window does not fit (ValueError in
        forward, a program error; ConfigError when the model is built)."""
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        ho, wo = (hw[0] - kh) // sh + 1, (hw[1] - kw) // sw + 1
        if ho < 1 or wo < 1:
            raise error(f"{self!r} does not fit the input {tuple(hw)}")
        return ho, wo

    def forward_hw(self, x):
        """``out_hw`` of a forward input x (N, C, H, W)."""
        if x.ndim != 4:
            raise ValueError(f"{self!r} expects input (N, C, H, W), got {x.shape}")
        return self.out_hw(x.shape[2:], ValueError)

    def offsets(self, a, out_hw):
        """(index, view) for each kernel offset: the (N, C, Ho, Wo) view of ``a`` it covers."""
        (kh, kw), (sh, sw), (ho, wo) = self.kernel_size, self.stride, out_hw
        for i in range(kh):
            for j in range(kw):
                yield i * kw + j, a[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]

    def route(self, dx, out_hw, grad_at):
        """Write (or, for overlapping windows, add) ``grad_at(k)`` into each offset's view of ``dx``."""
        for k, view in self.offsets(dx, out_hw):
            if self.overlapping:
                view += grad_at(k)
            else:
                view[...] = grad_at(k)
        return dx

    def flops(self, input_shape=None):
        c, h, w = input_shape or self.input_shape
        return c * int(np.prod(self.out_hw((h, w)))) * self.kernel_size[0] * self.kernel_size[1]

    def __repr__(self):
        k, s = self.kernel_size, self.stride
        text = lambda p: str(p[0]) if p[0] == p[1] else f"{p[0]}x{p[1]}"  # noqa: E731
        return f"{type(self).__name__}({text(k)}" + ("" if s == k else f", stride={text(s)}") + ")"


@register("maxpool2d")
class MaxPool2D(_Pool2D):
    """Maximum over each window; the gradient goes to the first maximum of the window (ties after ReLU)."""

    def __init__(self, kernel_size, stride=None):
        super().__init__(kernel_size, stride)
        self.scratch = Scratch()  # private work arrays, reused: fresh ones cost page faults every step

    def forward(self, x, training=True):
        out_hw = self.forward_hw(x)
        views = self.offsets(x, out_hw)
        y = np.array(next(views)[1])
        index = np.min_scalar_type(self.kernel_size[0] * self.kernel_size[1] - 1)
        first = self.scratch.get("first", y.shape, index)  # the offset of each window's first maximum
        first.fill(0)
        beats, code = self.scratch.get("beats", y.shape, bool), self.scratch.get("code", y.shape, index)
        window = self.scratch.get("window", y.shape, y.dtype)
        for k, view in views:  # the first maximum is the last offset to beat the maximum so far (k grows)
            np.copyto(window, view)  # one strided copy: ufuncs on strided views run ~4x slower (no SIMD)
            np.greater(window, y, out=beats)
            np.maximum(y, window, out=y)
            np.maximum(first, np.multiply(beats, index.type(k), out=code), out=first)
        self._cache = (x.shape, out_hw, first)
        return self.hold("y", y)

    def backward(self, dy):
        shape, out_hw, first = self._cache
        tiled = self.stride == self.kernel_size and shape[2:] == tuple(np.multiply(out_hw, self.kernel_size))
        dx = (np.empty if tiled else np.zeros)(shape, dy.dtype)  # every position written when windows tile x
        hit = self.scratch.get("beats", first.shape, bool)
        for k, view in self.offsets(dx, out_hw):
            np.equal(first, k, out=hit)
            if self.overlapping:
                view += dy * hit
            else:
                np.multiply(dy, hit, out=view)
        return self.hold("dx", dx)


@register("avgpool2d")
class AvgPool2D(_Pool2D):
    """Mean over each window."""

    def forward(self, x, training=True):
        out_hw = self.forward_hw(x)
        views = self.offsets(x, out_hw)
        _, first = next(views)
        y = first.copy()
        for _, view in views:
            y += view
        y *= 1.0 / (self.kernel_size[0] * self.kernel_size[1])
        self._shape = x.shape
        return self.hold("y", y)

    def backward(self, dy):
        out_hw = dy.shape[2:]
        share = dy * (1.0 / (self.kernel_size[0] * self.kernel_size[1]))
        return self.hold("dx", self.route(np.zeros(self._shape, dy.dtype), out_hw, lambda k: share))


@register("l2pool2d")
class L2Pool2D(_Pool2D):
    """Square root of the sum of squares over each window (PyTorch's ``lp_pool2d`` with norm 2). Its gradient
    x / y is taken as 0 where a window is all zeros (y = 0), where the square root has no derivative."""

    def forward(self, x, training=True):
        out_hw = self.forward_hw(x)
        views = self.offsets(x, out_hw)
        _, first = next(views)
        s = np.square(first)
        for _, view in views:
            s += np.square(view)
        y = np.sqrt(s, out=s)
        self._cache = (x, y)
        return self.hold("y", y)

    def backward(self, dy):
        x, y = self._cache
        out_hw = y.shape[2:]
        share = np.divide(dy, y, out=np.zeros_like(y), where=y > 0)
        xs = [view for _, view in self.offsets(x, out_hw)]
        return self.hold("dx", self.route(np.zeros(x.shape, dy.dtype), out_hw, lambda k: xs[k] * share))
