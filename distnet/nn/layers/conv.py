"""Conv2D (cross-correlation, NCHW) and ConvTranspose2D (its exact adjoint).

Both lower to im2col + GEMM (one GEMM over the batch, or one per sample where outputs are large: see im2col.py).
Conv2D with stride 1 and enough channels instead multiplies in the frequency domain (``Spectrum``): per
frequency, one small complex GEMM over the channels replaces kh*kw positions' worth of work (the 5x5 32->64
convolution of the reference CNN needs 8x fewer multiplies; the whole layer runs ~4x faster).
"""

import functools

import numpy as np

from ...errors import ConfigError
from .. import init as initializers
from .base import Layer, register
from .im2col import (
    CHWN,
    CNHW,
    NCHW,
    Scratch,
    col2im,
    cols_shape,
    conv_output_size,
    im2col,
    layout_shape,
    pad_into,
    padding_amounts,
    pair,
    to_nchw,
    unpad,
)


def _kernel_text(k):
    return str(k[0]) if k[0] == k[1] else f"{k[0]}x{k[1]}"


def _phases(n, length, shift, sign, half):
    """e^(sign 2 pi i f (p + shift) / length) for pixels p < n (rows) and frequencies f (columns), all of them or
    the half spectrum f <= length // 2 of a real image."""
    f = np.arange(length // 2 + 1 if half else length)
    return np.exp(sign * 2j * np.pi * np.outer(np.arange(n) + shift, f) / length)


@functools.lru_cache(maxsize=256)
def _analysis(n, length, shift, sign, dtype, along_w):
    """Forward DFT matrix: along H complex (length, n), applied from the left; along W the half spectrum, real
    (n, 2 * half) with (re, im) interleaved, applied from the right."""
    m = _phases(n, length, shift, sign, along_w).astype(np.result_type(dtype, np.complex64))
    return m.view(dtype) if along_w else np.ascontiguousarray(m.T)


@functools.lru_cache(maxsize=256)
def _synthesis(n, length, shift, sign, dtype, along_w):
    """Inverse of ``_analysis(..., -sign, ...)`` read at pixels p < n: along H complex (n, length); along W real
    (2 * half, n) for the real part of the sum over the half spectrum, where all f but 0 and length/2 count twice."""
    m = _phases(n, length, shift, sign, along_w) / length
    if not along_w:
        return m.astype(np.result_type(dtype, np.complex64))
    f = np.arange(m.shape[1])
    m = (m * np.where((f == 0) | (2 * f == length), 1.0, 2.0)).T
    return np.stack([m.real, -m.imag], axis=1).reshape(-1, n).astype(dtype)  # Re(z m) = z.re m.re - z.im m.im


class Spectrum:
    """Exact 2-D DFTs of real images over a periodic ``frame`` (Lh, Lw), each as two small GEMMs (no FFT: the
    frames are small, and dense matrices allow any size and an offset). An image's pixel (i, j) sits at
    (i + shift[0], j + shift[1]) of the frame. Spectra are frequency-major: (Lh * (Lw // 2 + 1), images), so
    that each frequency's channel mixing is one GEMM."""

    def __init__(self, frame, dtype, scratch):
        self.frame, self.dtype, self.scratch = frame, np.dtype(dtype), scratch
        self.cdtype = np.result_type(self.dtype, np.complex64)
        self.half = frame[1] // 2 + 1
        self.size = frame[0] * self.half

    def analyze(self, name, a, shift, sign):
        """The spectrum (size, b) of the images a (b, h, w), phases of sign ``sign`` (-1: the usual DFT)."""
        b, h, w = a.shape
        (lh, lw), half = self.frame, self.half
        rows = self.scratch.get(name + ".rows", (b, h, 2 * half), self.dtype)
        along_w = _analysis(w, lw, shift[1], sign, self.dtype, True)
        np.matmul(a.reshape(b * h, w), along_w, out=rows.reshape(b * h, 2 * half))
        cols = self.scratch.get(name + ".cols", (h, half, b), self.cdtype)
        cols[...] = rows.view(self.cdtype).transpose(1, 2, 0)
        out = self.scratch.get(name, (self.size, b), self.cdtype)
        along_h = _analysis(h, lh, shift[0], sign, self.dtype, False)
        np.matmul(along_h, cols.reshape(h, half * b), out=out.reshape(lh, half * b))
        return out

    def empty(self, name, b):
        """A spectrum buffer for b images: (size, ld), ld > b off multiples of 64, so that the transposed copy in
        ``synthesize`` does not read with a 4 KiB-aligned stride (cache-set conflicts make it 5x slower)."""
        ld = b + 8 if (b + 8) % 64 else b + 16
        return self.scratch.get(name, (self.size, ld), self.cdtype, zero=True)

    def synthesize(self, name, spec, b, hw, shift, sign, out=None):
        """Real images (b, h, w) from the first b columns of the spectrum buffer ``spec`` (see ``empty``):
        the inverse of ``analyze`` with phases of sign -``sign``."""
        (h, w), (lh, lw), half, ld = hw, self.frame, self.half, spec.shape[1]
        cols = self.scratch.get(name + ".cols", (h, half, ld), self.cdtype)
        along_h = _synthesis(h, lh, shift[0], sign, self.dtype, False)
        np.matmul(along_h, spec.reshape(lh, half * ld), out=cols.reshape(h, half * ld))
        rows = self.scratch.get(name + ".rows", (b, h, half), self.cdtype)
        rows[...] = cols[:, :, :b].transpose(2, 0, 1)
        out = np.empty((b, h, w), self.dtype) if out is None else out
        along_w = _synthesis(w, lw, shift[1], sign, self.dtype, True)
        np.matmul(rows.view(self.dtype).reshape(b * h, 2 * half), along_w, out=out.reshape(b * h, w))
        return out


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
            raise ValueError(f"{self!r} expects input (N, {self.in_channels}, H, W), got {x.shape}")
        return x

    def _fit(self, geometry, hw):
        """``geometry(hw)`` for an input met in forward, where a misfit is a program error (ValueError), not a
        configuration one (ConfigError, as when the model is built)."""
        try:
            return geometry(hw)
        except ConfigError as e:
            raise ValueError(str(e)) from None

    def __repr__(self):
        pad = self.padding if isinstance(self.padding, str) else _kernel_text(pair(self.padding, "padding"))
        s = _kernel_text(self.stride)
        bias = "" if self.bias else ", bias=False"
        return (f"{type(self).__name__}({self.in_channels}, {self.out_channels}, "
                f"k={_kernel_text(self.kernel_size)}, s={s}, p={pad}{bias})")


@register("conv2d")
class Conv2D(_ConvBase):
    """2-D cross-correlation: x (N, C, H, W) -> (N, O, Ho, Wo); W (O, C, kh, kw), b (O,)."""

    method = "auto"  # "im2col"; "spectral" (stride 1); "auto": spectral where it is the faster one
    PER_SAMPLE_GEMM = 256  # im2col with at least this many output pixels: one GEMM per sample (layout NCHW)

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

    def spectrum(self, hw, pads):
        """The ``Spectrum`` to convolve in, or None for im2col. Its frame is the smallest one where the periodic
        wrap-around reaches only padding: Lh >= h + max(top, bottom) (and likewise for W)."""
        if self.stride != (1, 1) or self.method == "im2col":
            return None
        (h, w), (kh, kw), c, o = hw, self.kernel_size, self.in_channels, self.out_channels
        frame = (h + max(pads[0], pads[1]), w + max(pads[2], pads[3]))
        if self.method == "auto":  # flops of a forward: channel GEMMs (complex) + DFTs (dense, so not for big images)
            spectral = 8 * c * o * frame[0] * (frame[1] // 2 + 1) + 2 * (c + o) * h * w * (frame[1] + 2 * frame[0])
            if min(c, o) < 8 or spectral >= 2 * c * o * kh * kw * h * w:
                return None
        return Spectrum(frame, self.dtype, self.scratch)

    def path(self, hw):
        """How forward/backward compute for images of size HW: "spectral", "im2col per sample" or "im2col"."""
        pads, (ho, wo) = self.geometry(hw)
        if self.spectrum(hw, pads) is not None:
            return "spectral"
        return "im2col per sample" if ho * wo >= self.PER_SAMPLE_GEMM else "im2col"

    def forward(self, x, training=True):
        x = self._input(x)
        n, c, h, w = x.shape
        pads, (ho, wo) = self._fit(self.geometry, (h, w))
        (kh, kw), o = self.kernel_size, self.out_channels
        sp = self.spectrum((h, w), pads)
        if sp is not None:
            return self.hold("y", self._forward_spectral(sp, x, pads, (ho, wo)))
        if ho * wo >= self.PER_SAMPLE_GEMM:
            order = NCHW
        else:
            order = CHWN if self.needs_dx and training else CNHW  # CHWN pays off only where col2im runs
        hp, wp = h + pads[0] + pads[1], w + pads[2] + pads[3]
        xp = self.scratch.get(f"xp{order}", layout_shape(n, c, hp, wp, order), self.dtype, zero=True)  # per layout:
        # a buffer of the same shape in the other layout would have data in this one's zero border
        pad_into(x, xp, pads[0], pads[2], order)
        cols = self.scratch.get("cols", cols_shape(n, c, (kh, kw), (ho, wo), order), self.dtype)
        im2col(xp, cols, self.stride, order)
        self._cache = ("im2col", x.shape, pads, cols, order)
        w2 = self.params["W"].reshape(o, -1)
        if order == NCHW:
            y = np.matmul(w2, cols.reshape(n, c * kh * kw, ho * wo))
            if self.bias:
                y += self.params["b"][:, None]
            return self.hold("y", y.reshape(n, o, ho, wo))
        y = self.scratch.get("y", layout_shape(n, o, ho, wo, order), self.dtype)
        np.matmul(w2, cols.reshape(c * kh * kw, -1), out=y.reshape(o, -1))
        if self.bias:
            y.reshape(o, -1)[...] += self.params["b"][:, None]
        return self.hold("y", np.ascontiguousarray(to_nchw(y, order)))

    def _forward_spectral(self, sp, x, pads, out_hw):
        """Per frequency f: Y_f (N, O) = X_f (N, C) @ conj(W_f)^T, the cross-correlation theorem."""
        n, c, h, w = x.shape
        o = self.out_channels
        xf = sp.analyze("x", x.reshape(n * c, h, w), (pads[0], pads[2]), -1).reshape(-1, n, c)
        wf = sp.analyze("w", self.params["W"].reshape(o * c, *self.kernel_size), (0, 0), 1).reshape(-1, o, c)
        yf = sp.empty("y", n * o)
        np.matmul(xf, wf.transpose(0, 2, 1), out=yf[:, :n * o].reshape(-1, n, o))
        if self.bias:  # a constant image's spectrum is all at frequency 0, scaled by the frame's area
            yf[0, :n * o].reshape(n, o)[...] += self.params["b"] * (sp.frame[0] * sp.frame[1])
        self._cache = ("spectral", x.shape, pads, sp, xf, wf)
        return sp.synthesize("y", yf, n * o, out_hw, (0, 0), 1).reshape(n, o, *out_hw)

    def _backward_spectral(self, dy):
        """dW_f = sum_n conj(dY_f) X_f and dX_f = dY_f W_f, with conj(dY) = Z as the one spectrum taken of dy."""
        _, (n, c, h, w), pads, sp, xf, wf = self._cache
        o, (kh, kw) = self.out_channels, self.kernel_size
        dy = np.asarray(dy, self.dtype)
        zf = sp.analyze("dy", dy.reshape(n * o, *dy.shape[2:]), (0, 0), 1).reshape(-1, n, o)
        if self.bias:  # frequency 0 is the plain sum over the pixels
            np.sum(zf[0].real, axis=0, out=self.grads["b"])
        gf = sp.empty("dw", o * c)
        np.matmul(zf.transpose(0, 2, 1), xf, out=gf[:, :o * c].reshape(-1, o, c))
        sp.synthesize("dw", gf, o * c, (kh, kw), (0, 0), 1, out=self.grads["W"].reshape(o * c, kh, kw))
        if not self.needs_dx:
            return None
        df = sp.empty("dx", n * c)  # conj(dX), hence synthesized with the opposite sign
        np.matmul(zf, wf, out=df[:, :n * c].reshape(-1, n, c))
        return sp.synthesize("dx", df, n * c, (h, w), (pads[0], pads[2]), -1).reshape(n, c, h, w)

    def backward(self, dy):
        if self._cache[0] == "spectral":
            return self.hold("dx", self._backward_spectral(dy))
        _, (n, c, h, w), pads, cols, order = self._cache
        o, k = self.out_channels, c * self.kernel_size[0] * self.kernel_size[1]
        w2 = self.params["W"].reshape(o, k)
        dcols = self.scratch.get("dcols", cols.shape, self.dtype) if self.needs_dx else None
        if order == NCHW:  # per sample: dW = sum_n dy[n] @ cols[n]^T, dcols[n] = W^T @ dy[n]
            dy3, cols3 = np.asarray(dy, self.dtype).reshape(n, o, -1), cols.reshape(n, k, -1)
            np.sum(np.matmul(dy3, cols3.transpose(0, 2, 1)), axis=0, out=self.grads["W"].reshape(o, k))
            if self.bias:  # a matrix-vector product sums the pixels ~3x faster than np.sum over two axes
                np.sum(dy3 @ np.ones(dy3.shape[2], self.dtype), axis=0, out=self.grads["b"])
            if dcols is not None:
                np.matmul(w2.T, dy3, out=dcols.reshape(n, k, -1))
        else:  # one GEMM over all positions
            dy_l = self.scratch.get("dy", layout_shape(*dy.shape, order), self.dtype)
            to_nchw(dy_l, order)[...] = dy
            dy2, cols2 = dy_l.reshape(o, -1), cols.reshape(k, -1)
            np.matmul(dy2, cols2.T, out=self.grads["W"].reshape(o, k))
            if self.bias:
                np.sum(dy2, axis=1, out=self.grads["b"])
            if dcols is not None:
                np.matmul(w2.T, dy2, out=dcols.reshape(k, -1))
        if dcols is None:
            return None
        hp, wp = h + pads[0] + pads[1], w + pads[2] + pads[3]
        dxp = self.scratch.get("dxp", layout_shape(n, c, hp, wp, order), self.dtype)
        col2im(dcols, dxp, self.stride, order)
        return self.hold("dx", unpad(dxp, pads[0], pads[2], h, w, order))

    def flops(self, input_shape=None):
        c, h, w = input_shape or self.input_shape
        ho, wo = self.spatial_output((h, w))
        return 2 * self.in_channels * self.kernel_size[0] * self.kernel_size[1] * self.out_channels * ho * wo


@register("conv_transpose2d")
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
        ho, wo = self._fit(self.spatial_output, (h, w))
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
        return self.hold("y", y)

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
        return self.hold("dx", np.ascontiguousarray(dx2.reshape(ci, n, h, w).transpose(1, 0, 2, 3)))

    def flops(self, input_shape=None):
        c, h, w = input_shape or self.input_shape
        return 2 * self.in_channels * self.out_channels * self.kernel_size[0] * self.kernel_size[1] * h * w
