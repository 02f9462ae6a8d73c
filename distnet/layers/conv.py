"""Conv2D (cross-correlation, NCHW) and ConvTranspose2D (its exact adjoint), both as im2col + one GEMM."""

import numpy as np

from .. import init as initializers
from ..errors import ConfigError
from .base import Layer
from .im2col import (CHWN, CNHW, Scratch, col2im, conv_output_size, im2col, layout_shape, pad_into, padding_amounts,
                     pair, to_nchw, unpad)


def _kernel_text(k):
    return str(k[0]) if k[0] == k[1] else f"{k[0]}x{k[1]}"


class _ConvBase(Layer):
    """Shared construction, building and bookkeeping of the two convolutions."""

    decay = ("W",)

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, init, bias, dtype, seed):
        super().__init__()
        if in_channels is not None and int(in_channels) < 1 or int(out_channels) < 1:
            raise ConfigError(f"{type(self).__name__}: channel counts must be >= 1")
        self.in_channels = None if in_channels is None else int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        if min(self.kernel_size) < 1 or min(self.stride) < 1:
            raise ConfigError(f"{type(self).__name__}: kernel_size and stride must be >= 1")
        self.padding = padding
        self.init = initializers.get(init)
        self.bias = bool(bias)
        self.scratch = Scratch()
        if self.in_channels is not None:  # sizes known: own arrays at once, so the layer works alone
            self.dtype = np.dtype(dtype or np.float32)
            self.create(np.random.default_rng(0 if seed is None else seed))

    def infer_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ConfigError(f"{type(self).__name__} needs per-sample input (C, H, W), got {input_shape}")
        if self.in_channels is None:
            self.in_channels = int(input_shape[0])
        elif input_shape[0] != self.in_channels:
            raise ConfigError(f"{self!r} expects {self.in_channels} input channels, got shape {input_shape}")
        return (self.out_channels, *self.spatial_output(input_shape[1:]))

    def create(self, rng):
        shape = self.weight_shape()
        fan_in, fan_out = self.fans()
        self.params = {"W": self.init(shape, fan_in, fan_out, rng, self.dtype)}
        if self.bias:
            self.params["b"] = np.zeros(self.out_channels, self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def _input(self, x):
        x = np.asarray(x, dtype=self.dtype)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ConfigError(f"{self!r} expects input (N, {self.in_channels}, H, W), got {x.shape}")
        return x

    def __repr__(self):
        pad = self.padding if isinstance(self.padding, str) else _kernel_text(pair(self.padding, "padding"))
        s = _kernel_text(self.stride)
        bias = "" if self.bias else ", bias=False"
        return (f"{type(self).__name__}({self.in_channels}, {self.out_channels}, "
                f"k={_kernel_text(self.kernel_size)}, s={s}, p={pad}{bias})")


class Conv2D(_ConvBase):
    """2-D cross-correlation: x (N, C, H, W) -> (N, O, Ho, Wo); W (O, C, kh, kw), b (O,)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, init=None, bias=True,
                 dtype=None, seed=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, init, bias, dtype, seed)
        padding_amounts(padding, (1, 1), self.kernel_size, self.stride)  # validate early

    def weight_shape(self):
        return (self.out_channels, self.in_channels, *self.kernel_size)

    def fans(self):
        field = self.kernel_size[0] * self.kernel_size[1]
        return self.in_channels * field, self.out_channels * field

    def geometry(self, hw):
        pads = padding_amounts(self.padding, hw, self.kernel_size, self.stride)
        return pads, conv_output_size(hw, self.kernel_size, self.stride, pads)

    def spatial_output(self, hw):
        return self.geometry(hw)[1]

    def forward(self, x, training=True):
        x = self._input(x)
        n, c, h, w = x.shape
        pads, (ho, wo) = self.geometry((h, w))
        (kh, kw), o = self.kernel_size, self.out_channels
        order = CHWN if self.needs_dx and training else CNHW  # CHWN pays off only where col2im runs
        hp, wp = h + pads[0] + pads[1], w + pads[2] + pads[3]
        xp = self.scratch.get(f"xp{order}", layout_shape(n, c, hp, wp, order), self.dtype, zero=True)  # per layout:
        # a buffer of the same shape in the other layout would have data in this one's zero border
        pad_into(x, xp, pads[0], pads[2], order)
        cols = self.scratch.get("cols", (c, kh, kw, *layout_shape(n, c, ho, wo, order)[1:]), self.dtype)
        im2col(xp, cols, self.stride, order)
        y = self.scratch.get("y", layout_shape(n, o, ho, wo, order), self.dtype)
        np.matmul(self.params["W"].reshape(o, -1), cols.reshape(c * kh * kw, -1), out=y.reshape(o, -1))
        if self.bias:
            y.reshape(o, -1)[...] += self.params["b"][:, None]
        self._cache = (x.shape, pads, cols, order)
        return np.ascontiguousarray(to_nchw(y, order))

    def backward(self, dy):
        (n, c, h, w), pads, cols, order = self._cache
        o = self.out_channels
        dy_l = self.scratch.get("dy", layout_shape(*dy.shape, order), self.dtype)
        to_nchw(dy_l, order)[...] = dy
        dy2 = dy_l.reshape(o, -1)
        cols2 = cols.reshape(cols.shape[0] * cols.shape[1] * cols.shape[2], -1)
        np.matmul(dy2, cols2.T, out=self.grads["W"].reshape(o, -1))
        if self.bias:
            np.sum(dy2, axis=1, out=self.grads["b"])
        if not self.needs_dx:
            return None
        dcols = self.scratch.get("dcols", cols.shape, self.dtype)
        np.matmul(self.params["W"].reshape(o, -1).T, dy2, out=dcols.reshape(cols2.shape))
        hp, wp = h + pads[0] + pads[1], w + pads[2] + pads[3]
        dxp = self.scratch.get("dxp", layout_shape(n, c, hp, wp, order), self.dtype)
        col2im(dcols, dxp, self.stride, order)
        return unpad(dxp, pads[0], pads[2], h, w, order)

    def flops(self, input_shape=None):
        c, h, w = input_shape or self.input_shape
        ho, wo = self.spatial_output((h, w))
        return 2 * self.in_channels * self.kernel_size[0] * self.kernel_size[1] * self.out_channels * ho * wo


class ConvTranspose2D(_ConvBase):
    """Transposed convolution, the adjoint of Conv2D: W (in, out, kh, kw); output (n-1)*s - 2*p + k."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, init=None, bias=True,
                 dtype=None, seed=None):
        if isinstance(padding, str):
            raise ConfigError(f"ConvTranspose2D padding must be an int or a pair, got {padding!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, init, bias, dtype, seed)
        self.pads = padding_amounts(padding, (1, 1), self.kernel_size, self.stride)

    def weight_shape(self):
        return (self.in_channels, self.out_channels, *self.kernel_size)

    def fans(self):
        """Each output pixel sums about in*kh*kw/(sh*sw) inputs; each input feeds out*kh*kw outputs."""
        field = self.kernel_size[0] * self.kernel_size[1]
        per_output = max(1, self.in_channels * field // (self.stride[0] * self.stride[1]))
        return per_output, self.out_channels * field

    def spatial_output(self, hw):
        (kh, kw), (sh, sw), (pt, pb, pl, pr) = self.kernel_size, self.stride, self.pads
        ho, wo = (hw[0] - 1) * sh - pt - pb + kh, (hw[1] - 1) * sw - pl - pr + kw
        if ho < 1 or wo < 1:
            raise ConfigError(f"{self!r}: padding {self.padding} leaves no output for input {tuple(hw)}")
        return ho, wo

    def forward(self, x, training=True):
        x = self._input(x)
        n, ci, h, w = x.shape
        ho, wo = self.spatial_output((h, w))
        (kh, kw), (pt, pb, pl, pr), co = self.kernel_size, self.pads, self.out_channels
        x2 = self.scratch.get("x2", (ci, n * h * w), self.dtype)
        x2.reshape(ci, n, h, w)[...] = x.transpose(1, 0, 2, 3)
        cols = self.scratch.get("cols", (co, kh, kw, n, h, w), self.dtype)
        np.matmul(self.params["W"].reshape(ci, -1).T, x2, out=cols.reshape(co * kh * kw, -1))
        yp = self.scratch.get("yp", (co, n, ho + pt + pb, wo + pl + pr), self.dtype)
        col2im(cols, yp, self.stride)
        y = unpad(yp, pt, pl, ho, wo)
        if self.bias:
            y += self.params["b"][:, None, None]
        self._cache = (x.shape, x2)
        return y

    def backward(self, dy):
        (n, ci, h, w), x2 = self._cache
        (kh, kw), (pt, pb, pl, pr), co = self.kernel_size, self.pads, self.out_channels
        if self.bias:
            np.sum(dy, axis=(0, 2, 3), out=self.grads["b"])
        dyp = self.scratch.get("dyp", (co, n, dy.shape[2] + pt + pb, dy.shape[3] + pl + pr), self.dtype, zero=True)
        pad_into(dy, dyp, pt, pl)
        cols = self.scratch.get("dcols", (co, kh, kw, n, h, w), self.dtype)
        im2col(dyp, cols, self.stride)
        cols2 = cols.reshape(co * kh * kw, -1)
        np.matmul(x2, cols2.T, out=self.grads["W"].reshape(ci, -1))
        if not self.needs_dx:
            return None
        dx2 = self.params["W"].reshape(ci, -1) @ cols2
        return np.ascontiguousarray(dx2.reshape(ci, n, h, w).transpose(1, 0, 2, 3))

    def flops(self, input_shape=None):
        c, h, w = input_shape or self.input_shape
        return 2 * self.in_channels * self.out_channels * self.kernel_size[0] * self.kernel_size[1] * h * w
