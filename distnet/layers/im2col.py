"""im2col/col2im for NCHW convolutions, with a channel-first padded buffer that makes the GEMM contiguous.

Layout (measured fastest of the ones tried, see ``distnet bench step``): the padded input is kept as
``(C, N, Hp, Wp)`` and the columns as ``(C, kh, kw, N, Ho, Wo)`` = a ``(C*kh*kw, N*Ho*Wo)`` matrix, so the
forward GEMM is ``W(O, C*kh*kw) @ cols`` and every copy below moves rows of contiguous pixels. The only Python
loops run over the kh*kw kernel offsets.
"""

import math

import numpy as np

from ..errors import ConfigError


def pair(v, what):
    """An int or a pair of ints as a pair."""
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(a, (int, np.integer)) for a in v):
        return int(v[0]), int(v[1])
    raise ConfigError(f"{what} must be an int or a pair of ints, got {v!r}")


def padding_amounts(padding, size, kernel, stride):
    """(top, bottom, left, right) padding for ``padding`` = int, pair, "same" or "valid"."""
    if padding == "valid":
        return 0, 0, 0, 0
    if padding == "same":  # output = ceil(n / stride); the odd extra row/column goes at the bottom/right
        amounts = []
        for n, k, s in zip(size, kernel, stride):
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            amounts += [total // 2, total - total // 2]
        return tuple(amounts)
    if isinstance(padding, str):
        raise ConfigError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    ph, pw = pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise ConfigError(f"padding must be >= 0, got {padding!r}")
    return ph, ph, pw, pw


def conv_output_size(size, kernel, stride, pads):
    """(Ho, Wo) of a convolution over ``size`` = (H, W) with (top, bottom, left, right) ``pads``."""
    (h, w), (kh, kw), (sh, sw) = size, kernel, stride
    ho = (h + pads[0] + pads[1] - kh) // sh + 1
    wo = (w + pads[2] + pads[3] - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ConfigError(f"kernel {kh}x{kw} does not fit the padded input {h}x{w} (padding {pads})")
    return ho, wo


def pad_into(x, buf, top, left):
    """Copy NCHW ``x`` into the interior of the channel-first buffer ``buf`` (C, N, Hp, Wp); borders stay 0."""
    h, w = x.shape[2:]
    buf[:, :, top:top + h, left:left + w] = x.transpose(1, 0, 2, 3)


def unpad(buf, top, left, h, w):
    """The NCHW interior (N, C, h, w) of a channel-first padded buffer, as a new contiguous array."""
    return np.ascontiguousarray(buf[:, :, top:top + h, left:left + w].transpose(1, 0, 2, 3))


def windows(xp, i, j, out_hw, stride):
    """View of ``xp`` (C, N, Hp, Wp) seen by kernel offset (i, j): shape (C, N, Ho, Wo)."""
    (ho, wo), (sh, sw) = out_hw, stride
    return xp[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]


def im2col(xp, cols, stride):
    """Fill ``cols`` (C, kh, kw, N, Ho, Wo) from the padded channel-first input ``xp``."""
    kh, kw, out_hw = cols.shape[1], cols.shape[2], cols.shape[4:]
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = windows(xp, i, j, out_hw, stride)


def col2im(cols, xp, stride):
    """Sum the columns ``cols`` (C, kh, kw, N, Ho, Wo) back into the padded buffer ``xp`` (overwritten)."""
    kh, kw, out_hw = cols.shape[1], cols.shape[2], cols.shape[4:]
    xp.fill(0)
    for i in range(kh):
        for j in range(kw):
            view = windows(xp, i, j, out_hw, stride)
            np.add(view, cols[:, i, j], out=view)


class Scratch:
    """Work arrays reused across steps, keyed by name and shape (a new batch size allocates new ones)."""

    def __init__(self, limit=12):
        self.arrays = {}
        self.limit = limit

    def get(self, name, shape, dtype, zero=False):
        key = (name, tuple(shape), np.dtype(dtype).str)
        a = self.arrays.get(key)
        if a is None:
            if len(self.arrays) >= self.limit:
                self.arrays.clear()
            a = self.arrays[key] = (np.zeros if zero else np.empty)(shape, dtype)
        return a
